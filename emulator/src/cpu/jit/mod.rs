//! The dynamic binary translator: hot blocks of 64-bit code, and of 32-bit
//! protected-mode code with flat segments, compiled to host code with
//! Cranelift on a thread of the vCPU's own ([`worker`]).
//!
//! A decoded block that has run often enough is translated as a whole. The
//! common integer instructions (moves, ALU, NEG/NOT, shifts and rotates,
//! IMUL, LEA, BSF/BSR, BSWAP, stack, near branches, SETcc/CMOVcc) and the
//! SSE2 integer and move instructions ([`sse`]) become host code, with the guest
//! registers they use kept in host registers; every other instruction calls
//! its interpreter handler. Memory accesses look up the software TLB inline;
//! anything else (a miss, a page-crossing access, device memory, a page
//! holding code, a fault) leaves the block before that instruction and the
//! interpreter runs the rest of it once. Arithmetic flags stay lazy
//! ([`super::flags`]) and are written back only before calls and exits.
//! Blocks enter each other directly (tail calls through link cells and the
//! jump cache), looking at the run loop's concerns on the way.
//!
//! A translated block behaves exactly as the interpreter running the same
//! instructions: the same results, the same exceptions at the same
//! instruction with the same state, and the same instruction count.

use super::exec::Insn;
use super::flags::{FlagOp, Flags};
use super::mmu::layout as tlb;
use super::ops_basic::{CMOVCC, JCC, SETCC};
use super::{Cpu, Exc, Segment, FS};
use cranelift_codegen::ir::condcodes::CondCode;
use cranelift_codegen::ir::{
    condcodes::IntCC, types, AbiParam, Block, BlockArg, InstBuilder, MemFlagsData, SigRef,
    Signature, Type, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};
use iced_x86::{Mnemonic as M, OpKind, Register};
use std::mem::offset_of;

mod sse;
pub(crate) mod worker;

/// The way into translated code from Rust: runs `code` for the decoded
/// block at `block` (and the blocks it chains to) on the CPU; returns
/// [`EARLY`] or 0.
///
/// Translated blocks use Cranelift's tail-call convention so that one can
/// jump straight into the next; each adds the instructions it retired to
/// `Cpu::icount` itself.
///
/// Translations are position-independent: a block's code takes the
/// decoded block it runs for, whose first RIP every guest address is
/// computed from, whose instructions the interpreter calls use and whose
/// link cells it reads. One translation so serves every block decoded from
/// the same physical bytes, whatever their virtual address (a shared
/// library mapped at another address in each process).
pub(crate) type EnterFn = unsafe extern "C" fn(*mut Cpu, usize, usize) -> u64;

/// Returned when the last block stopped early (an exception was delivered,
/// or an instruction ended the block): the run loop must not chain from it.
/// Otherwise `Cpu::jit_last` names the last block run.
pub(crate) const EARLY: u64 = 1;

/// Runs of a block before it is translated. Compiling costs as much as
/// interpreting a block some thousands of times, but on the vCPU's own
/// compiling thread ([`worker`]): 1000 beat 3000 on the grub-rescue CD and
/// matched it on the Linux boot, where 300 and 100 were slower (the
/// compiling thread falls behind).
pub(crate) const HOT: u32 = 1000;

/// The threshold from `VIREO_JIT` (`off`, or runs before translation),
/// else [`HOT`].
pub(crate) fn default_hot() -> u32 {
    static HOT_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *HOT_ENV.get_or_init(|| match std::env::var("VIREO_JIT") {
        Ok(v) if v == "off" || v == "0" => 0,
        Ok(v) => v.parse().unwrap_or(HOT).max(1),
        Err(_) => HOT,
    })
}

/// Host code kept before the translator starts afresh.
pub(crate) const MAX_CODE: usize = 96 << 20;

/// The per-vCPU translator and the host code it made.
pub(crate) struct Jit {
    /// Enters translated code.
    pub(crate) enter: EnterFn,
    module: Option<JITModule>,
    ctx: cranelift_codegen::Context,
    fctx: FunctionBuilderContext,
    code_bytes: usize,
    /// Host code kept before starting afresh ([`MAX_CODE`]; tests lower it).
    pub(crate) max_code: usize,
    /// Times the code memory was freed and started afresh.
    pub(crate) resets: u64,
    /// Blocks translated (for statistics).
    pub(crate) blocks: u64,
}

// SAFETY: the module's code and data are owned by this struct alone and
// used only by the thread that currently owns the vCPU.
unsafe impl Send for Jit {}

fn new_module() -> Result<JITModule, String> {
    let mut fb = settings::builder();
    for (k, v) in [
        // "speed" against "none", and the backtracking register allocator
        // against "single_pass", each won on the Linux boot.
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
        ("enable_verifier", "false"),
        // Tail calls between blocks need frame pointers.
        ("preserve_frame_pointers", "true"),
    ] {
        fb.set(k, v).map_err(|e| e.to_string())?;
    }
    let isa = cranelift_native::builder()
        .map_err(|e| e.to_string())?
        .finish(settings::Flags::new(fb))
        .map_err(|e| e.to_string())?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

impl Jit {
    /// A translator for the host CPU.
    pub(crate) fn new() -> Result<Self, String> {
        let mut module = new_module()?;
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let enter = build_enter(&mut module, &mut ctx, &mut fctx)?;
        Ok(Jit {
            enter,
            module: Some(module),
            ctx,
            fctx,
            code_bytes: 0,
            max_code: MAX_CODE,
            resets: 0,
            blocks: 0,
        })
    }

    /// True when the code memory is used up: the caller must drop every
    /// translated block and call [`Jit::reset`].
    pub(crate) fn full(&self) -> bool {
        self.code_bytes > self.max_code
    }

    /// Frees all host code.
    ///
    /// # Safety
    /// No [`JitFn`] this translator returned may run again.
    pub(crate) unsafe fn reset(&mut self) -> Result<(), String> {
        if let Some(m) = self.module.take() {
            // SAFETY: the caller guarantees no translated code runs again.
            unsafe { m.free_memory() };
        }
        let mut module = new_module()?;
        self.enter = build_enter(&mut module, &mut self.ctx, &mut self.fctx)?;
        self.module = Some(module);
        self.code_bytes = 0;
        self.resets += 1;
        Ok(())
    }

    /// Translates a block of 64-bit code (`smp`: LOCKed instructions must
    /// stay atomic, so they go to the interpreter). Returns the code and,
    /// for the block's two link cells (where translated successors will be
    /// entered directly once known), the RIPs they stand for as offsets from
    /// the block's first RIP.
    pub(crate) fn compile(
        &mut self,
        insns: &[Insn],
        smp: bool,
        bits: u32,
    ) -> Result<(usize, [Option<u64>; 2]), String> {
        let module = self.module.as_mut().ok_or("no module")?;
        module.clear_context(&mut self.ctx);
        let cfg = module.target_config();
        let sig = block_signature(module);
        self.ctx.func.signature = sig.clone();
        let link_rips;
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let sigs = Sigs::new(&mut b, module);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (cpu, ctx) = (b.block_params(entry)[0], b.block_params(entry)[1]);
            let start = insns.first().map_or(0, |d| d.ins.ip());
            let mut t = Tx::new(b, cpu, ctx, sigs, smp, bits, start);
            link_rips = t.block(insns).map(|r| r.map(|r| r.wrapping_sub(start)));
            t.b.seal_all_blocks();
            t.b.finalize(cfg);
        }
        let id = module
            .declare_anonymous_function(&sig)
            .map_err(|e| e.to_string())?;
        let dump = std::env::var("VIREO_JIT_DUMP")
            .ok()
            .and_then(|v| u32::from_str_radix(&v, 16).ok())
            == Some(id.as_u32());
        self.ctx.set_disasm(dump);
        module
            .define_function(id, &mut self.ctx)
            .map_err(|e| format!("{e:?}"))?;
        if dump {
            for d in insns {
                eprintln!("guest {:x}: {}", d.ins.ip(), d.ins);
            }
            if let Some(v) = self.ctx.compiled_code().and_then(|c| c.vcode.clone()) {
                eprintln!("{v}");
            }
        }
        self.code_bytes += self
            .ctx
            .compiled_code()
            .map_or(0, |c| c.code_info().total_size as usize);
        module.clear_context(&mut self.ctx);
        module.finalize_definitions().map_err(|e| e.to_string())?;
        let p = module.get_finalized_function(id);
        self.blocks += 1;
        Ok((p as usize, link_rips))
    }
}

/// The signature of translated blocks: the CPU and the decoded block in,
/// [`EARLY`] or 0 out, in the tail-call convention.
fn block_signature(m: &JITModule) -> Signature {
    let mut sig = Signature::new(CallConv::Tail);
    for _ in 0..2 {
        sig.params
            .push(AbiParam::new(m.target_config().pointer_type()));
    }
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Compiles the C-convention trampoline into tail-convention blocks.
fn build_enter(
    module: &mut JITModule,
    ctx: &mut cranelift_codegen::Context,
    fctx: &mut FunctionBuilderContext,
) -> Result<EnterFn, String> {
    module.clear_context(ctx);
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(ptr));
    sig.returns.push(AbiParam::new(types::I64));
    ctx.func.signature = sig.clone();
    let block_sig = block_signature(module);
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry);
        let (cpu, code, block) = (p[0], p[1], p[2]);
        let sref = b.import_signature(block_sig);
        let call = b.ins().call_indirect(sref, code, &[cpu, block]);
        let r = b.inst_results(call)[0];
        b.ins().return_(&[r]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    let id = module
        .declare_anonymous_function(&sig)
        .map_err(|e| e.to_string())?;
    module
        .define_function(id, ctx)
        .map_err(|e| format!("{e:?}"))?;
    module.clear_context(ctx);
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let p = module.get_finalized_function(id);
    // SAFETY: `p` is the entry of a function compiled with the signature of
    // `EnterFn` (three pointer-sized arguments, an i64 result, the
    // platform's C calling convention), valid until the module is freed.
    Ok(unsafe { std::mem::transmute::<*const u8, EnterFn>(p) })
}

/// Signatures of the helpers translated code calls.
struct Sigs {
    block: SigRef,
    interp: SigRef,
    lookup: SigRef,
    cond: SigRef,
    set_flags: SigRef,
}

impl Sigs {
    fn new(b: &mut FunctionBuilder, m: &JITModule) -> Self {
        let mk = |params: &[Type], ret: Type| {
            let mut s = m.make_signature();
            s.params.extend(params.iter().map(|t| AbiParam::new(*t)));
            s.returns.push(AbiParam::new(ret));
            s
        };
        use types::{I32, I64};
        Sigs {
            block: b.import_signature(block_signature(m)),
            interp: b.import_signature(mk(&[I64, I64], I32)),
            lookup: b.import_signature(mk(&[I64], I64)),
            cond: b.import_signature(mk(&[I64, I32], I32)),
            set_flags: b.import_signature(mk(&[I64, I64, I64], I32)),
        }
    }
}

// ---- helpers called from translated code ----

/// Raises `e` for the instruction at `ip` as the interpreter would.
fn fault(c: &mut Cpu, ip: u64, e: Exc) {
    c.rip = ip;
    c.raise(e);
    c.stop_block = false;
}

/// Runs one instruction in the interpreter, as the run loop does: 0 done,
/// 1 exception delivered, 2 done and the block must stop.
unsafe extern "C" fn h_interp(cpu: *mut Cpu, insn: *const Insn) -> u32 {
    // SAFETY: translated code passes the CPU it runs on, exclusively
    // borrowed by the run loop for the duration of the call; `insn` points
    // into the block being run, which
    // stays alive (cached or in the graveyard) while it runs.
    let (c, d) = unsafe { (&mut *cpu, &*insn) };
    c.rip = d.ins.next_ip() & c.ip_mask();
    let r = (d.handler)(c, d);
    // The privilege level may have changed.
    c.jit_tables();
    match r {
        Err(e) => {
            fault(c, d.ins.ip(), e);
            1
        }
        Ok(()) if c.stop_block => 2,
        Ok(()) => 0,
    }
}

/// The decoded block to enter next, translated (see `Cpu::jit_lookup`),
/// or 0.
unsafe extern "C" fn h_lookup(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in `h_interp`.
    let c = unsafe { &mut *cpu };
    c.jit_lookup() as u64
}

/// Evaluates condition code `cc` from the flags in memory.
/// Sets the arithmetic flags in `mask` to those of `v` (the others stay).
unsafe extern "C" fn h_set_flags(cpu: *mut Cpu, v: u64, mask: u64) -> u32 {
    // SAFETY: as in `h_interp`.
    let c = unsafe { &mut *cpu };
    c.flags.set_masked(v, mask);
    0
}

unsafe extern "C" fn h_cond(cpu: *mut Cpu, cc: u32) -> u32 {
    // SAFETY: as in `h_interp`.
    let c = unsafe { &*cpu };
    c.flags.cond(cc as u8) as u32
}

// ---- the translator ----

const GPR: i32 = offset_of!(Cpu, gpr) as i32;
const RIP: i32 = offset_of!(Cpu, rip) as i32;
const SKIP: i32 = offset_of!(Cpu, jit_skip) as i32;
const JMP_GEN: i32 = (offset_of!(Cpu, cache) + offset_of!(super::exec::CodeCache, jmp_gen)) as i32;
const JMP_ENTRY: i64 = std::mem::size_of::<super::exec::JmpEntry>() as i64;
const JMP_CODE: i32 = offset_of!(super::exec::JmpEntry, code) as i32;
const JMP_BLOCK: i32 = offset_of!(super::exec::JmpEntry, block) as i32;
const JMP_E_GEN: i32 = offset_of!(super::exec::JmpEntry, gen) as i32;
const B_CODE: i32 = offset_of!(super::exec::Block, code) as i32;
const B_LINKS: i32 = offset_of!(super::exec::Block, links) as i32;
const B_BASE: i32 = offset_of!(super::exec::Block, base) as i32;
const B_INSNS: i32 = offset_of!(super::exec::Block, insns_ptr) as i32;
const XMM: i32 = offset_of!(Cpu, xmm) as i32;
const CR0: i32 = offset_of!(Cpu, cr0) as i32;
const CR4: i32 = offset_of!(Cpu, cr4) as i32;
const INSN_SIZE: i64 = std::mem::size_of::<Insn>() as i64;
const ICOUNT: i32 = offset_of!(Cpu, icount) as i32;
const LAST: i32 = offset_of!(Cpu, jit_last) as i32;
const CHAIN_LIMIT: i32 = offset_of!(Cpu, jit_chain_limit) as i32;
const EXIT_PTR: i32 = offset_of!(Cpu, jit_exit_ptr) as i32;
const IRQ_PTR: i32 = offset_of!(Cpu, jit_irq_ptr) as i32;
const CODE_PTR: i32 = offset_of!(Cpu, jit_code_ptr) as i32;
const F_BITS: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, bits)) as i32;
const TLB_NOW: i32 = offset_of!(Cpu, jit_tlb) as i32;
const JMP_NOW: i32 = offset_of!(Cpu, jit_jmp) as i32;
const F_OP: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, op)) as i32;
const F_SIZE: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, size)) as i32;
const F_DST: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, dst)) as i32;
const F_SRC: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, src)) as i32;
const F_RES: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, res)) as i32;
const F_AUX: i32 = (offset_of!(Cpu, flags) + offset_of!(Flags, aux)) as i32;

fn seg_limit(s: usize) -> i32 {
    (offset_of!(Cpu, seg) + s * std::mem::size_of::<Segment>() + offset_of!(Segment, limit)) as i32
}

fn seg_attr(s: usize) -> i32 {
    (offset_of!(Cpu, seg) + s * std::mem::size_of::<Segment>() + offset_of!(Segment, attr)) as i32
}

fn seg_base(s: usize) -> i32 {
    (offset_of!(Cpu, seg) + s * std::mem::size_of::<Segment>() + offset_of!(Segment, base)) as i32
}

const _: () = assert!(
    offset_of!(super::exec::JmpEntry, code) == 8 && offset_of!(super::exec::JmpEntry, gen) == 16
);
const _: () = assert!((tlb::ENTRY as u64).is_power_of_two() && tlb::ENTRY <= 4096);

/// The lazy flags of the last flag-setting instruction translated, as SSA
/// values (see [`Flags`] for what each field means per op).
#[derive(Clone, Copy)]
struct Lazy {
    op: FlagOp,
    /// ADC/SBB: `aux` holds a carry-in that may be 1.
    carry: bool,
    size: u8,
    dst: Value,
    src: Value,
    res: Value,
    aux: Value,
}

/// Where an operand lives.
#[derive(Clone, Copy)]
enum Loc {
    Reg(Register),
    /// Memory at a linear address.
    Mem(Value),
}

/// A general-purpose register: (index, bit shift, size in bytes).
fn gpr_of(r: Register) -> Option<(usize, i64, u8)> {
    if !r.is_gpr() {
        return None;
    }
    Some(match r {
        Register::AH | Register::CH | Register::DH | Register::BH => {
            (r as usize - Register::AH as usize, 8, 1)
        }
        _ => (
            r.full_register() as usize - Register::RAX as usize,
            0,
            r.size() as u8,
        ),
    })
}

fn mask(size: u8) -> i64 {
    super::flags::size_mask(size) as i64
}

fn int_type(size: u8) -> Type {
    match size {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}

fn is_mem(k: OpKind) -> bool {
    k == OpKind::Memory
}

fn is_imm(k: OpKind) -> bool {
    super::operand::is_immediate(k)
}

/// True for a register operand that is a GPR.
fn gpr_op(d: &Insn, i: u32) -> bool {
    d.ins.op_kind(i) == OpKind::Register && gpr_of(d.ins.op_register(i)).is_some()
}

fn rm_op(d: &Insn, i: u32) -> bool {
    gpr_op(d, i) || is_mem(d.ins.op_kind(i))
}

fn canonical(a: u64) -> bool {
    super::ops_basic::canonical(a)
}

/// Which of a block's instructions the translator emits itself (bit `i`
/// for instruction `i`): a translation made for one decoding of the bytes
/// serves another only if this agrees (near branches to non-canonical
/// targets are left to the interpreter).
pub(crate) fn native_mask(insns: &[Insn], smp: bool, bits: u32) -> u64 {
    insns
        .iter()
        .enumerate()
        .take(64)
        .fold(0, |m, (i, d)| m | (native(d, smp, bits) as u64) << i)
}

/// Whether the translator emits `d` itself (else it calls the interpreter),
/// in code of `bits` (64, or 32 with flat segments).
fn native(d: &Insn, smp: bool, bits: u32) -> bool {
    let ins = &d.ins;
    if smp && super::atomic::is_locked(ins) {
        return false;
    }
    if bits == 32 {
        // Only DS, ES and SS, which the flat check covers, address memory.
        let n = ins.op_count();
        if (0..n).any(|i| is_mem(ins.op_kind(i)))
            && !matches!(
                ins.memory_segment(),
                Register::DS | Register::ES | Register::SS
            )
        {
            return false;
        }
    }
    native_common(d, bits)
}

/// [`native`] after the mode's own checks.
fn native_common(d: &Insn, bits: u32) -> bool {
    let ins = &d.ins;
    // Stack slots and branch targets are words of the mode.
    let (w, near) = if bits == 64 {
        (8u8, OpKind::NearBranch64)
    } else {
        (4u8, OpKind::NearBranch32)
    };
    let wi = w as i32;
    if ins.has_lock_prefix()
        && !matches!(
            ins.mnemonic(),
            M::Add | M::Sub | M::And | M::Or | M::Xor | M::Inc | M::Dec
        )
    {
        return false;
    }
    if sse::native(d) {
        return true;
    }
    let s = d.osize;
    let sized = matches!(s, 1 | 2 | 4 | 8);
    let n = ins.op_count();
    let mem_ok = (0..n).all(|i| !is_mem(ins.op_kind(i)) || ins.memory_size().size() <= 8);
    if !mem_ok {
        return false;
    }
    match ins.mnemonic() {
        M::Nop => true,
        M::Mov => {
            n == 2
                && sized
                && rm_op(d, 0)
                && (gpr_op(d, 1)
                    || (is_mem(ins.op1_kind()) && !is_mem(ins.op0_kind()))
                    || is_imm(ins.op1_kind()))
        }
        M::Movzx | M::Movsx | M::Movsxd => n == 2 && gpr_op(d, 0) && rm_op(d, 1) && sized,
        M::Lea => gpr_op(d, 0) && is_mem(ins.op1_kind()) && matches!(s, 2 | 4 | 8),
        M::Add | M::Sub | M::Cmp | M::And | M::Or | M::Xor | M::Test | M::Adc | M::Sbb => {
            n == 2
                && sized
                && rm_op(d, 0)
                && (gpr_op(d, 1)
                    || is_imm(ins.op1_kind())
                    || (is_mem(ins.op1_kind()) && gpr_op(d, 0)))
        }
        M::Inc | M::Dec | M::Neg | M::Not => n == 1 && sized && rm_op(d, 0),
        M::Shl | M::Shr | M::Sar
            if n == 2
                && matches!(s, 4 | 8)
                && gpr_op(d, 0)
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register() == Register::CL =>
        {
            true
        }
        // By a non-zero immediate count.
        M::Rol | M::Ror => {
            n == 2
                && sized
                && rm_op(d, 0)
                && is_imm(ins.op1_kind())
                && d.imm & if s == 8 { 63 } else { 31 } != 0
        }
        M::Bsf | M::Bsr => n == 2 && matches!(s, 2 | 4 | 8) && gpr_op(d, 0) && rm_op(d, 1),
        M::Shl | M::Shr | M::Sar => {
            if !(n == 2 && sized && rm_op(d, 0) && is_imm(ins.op1_kind())) {
                return false;
            }
            let cnt = d.imm & if s == 8 { 63 } else { 31 };
            cnt != 0 && cnt < s as u64 * 8
        }
        M::Imul => {
            matches!(s, 2 | 4 | 8)
                && gpr_op(d, 0)
                && ((n == 2 && rm_op(d, 1)) || (n == 3 && rm_op(d, 1) && is_imm(ins.op2_kind())))
        }
        M::Push => {
            n == 1
                && ins.stack_pointer_increment() == -wi
                && (gpr_op(d, 0) && s == w || is_imm(ins.op0_kind()))
        }
        M::Pop => n == 1 && ins.stack_pointer_increment() == wi && gpr_op(d, 0) && s == w,
        M::Jmp if ins.op0_kind() == near => bits != 64 || canonical(d.imm),
        M::Call if ins.op0_kind() == near => {
            ins.stack_pointer_increment() == -wi && (bits != 64 || canonical(d.imm))
        }
        // Indirect (the target checked at run time).
        M::Jmp => n == 1 && s == w && rm_op(d, 0),
        M::Call => n == 1 && s == w && rm_op(d, 0) && ins.stack_pointer_increment() == -wi,
        M::Bswap => gpr_op(d, 0) && matches!(s, 4 | 8),
        M::Ret => n == 0 && ins.stack_pointer_increment() == wi,
        m if JCC.contains(&m) => ins.op0_kind() == near && (bits != 64 || canonical(d.imm)),
        m if SETCC.contains(&m) => n == 1 && rm_op(d, 0),
        m if CMOVCC.contains(&m) => n == 2 && matches!(s, 2 | 4 | 8) && gpr_op(d, 0) && rm_op(d, 1),
        _ => false,
    }
}

/// Register-cache state of one guest GPR.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RegState {
    /// Not read yet: lives in memory only.
    Unloaded,
    /// The variable holds the value, as does memory.
    Clean,
    /// The variable holds a value memory does not have yet.
    Dirty,
}

struct Tx<'f> {
    b: FunctionBuilder<'f>,
    cpu: Value,
    sigs: Sigs,
    smp: bool,
    tlb_r: Value,
    tlb_w: Value,
    /// The jump-cache table for this privilege level.
    jmp: Value,
    regs: [Variable; 16],
    state: [RegState; 16],
    /// Flags of the last flag-setting instruction, if translated here.
    lazy: Option<Lazy>,
    /// `lazy` is not in memory yet.
    lazy_dirty: bool,
    /// Index of the instruction being translated.
    at: usize,
    /// The decoded block run (see [`EnterFn`]), its first RIP and its
    /// instructions.
    ctx: Value,
    base: Value,
    insns: Value,
    /// How the last native instruction left the block, if it branched.
    term: Option<Term>,
    /// No instruction that may change paging or modes ran: the block may
    /// enter its successor directly.
    chain_ok: bool,
    /// RIP of the block's first instruction, and where its code starts
    /// (a branch back to the block's start loops within the function).
    start: u64,
    top: Block,
    /// The shared end of side exits, once made.
    exit_tail: Option<Block>,
    /// SSE instructions may run: checked since the last interpreted
    /// instruction (see [`sse`]).
    sse_ok: bool,
    /// The code's bitness: 64, or 32 (protected mode, translated for flat
    /// segments).
    bits: u32,
    /// 32-bit code: the segments were found flat since the last
    /// interpreted instruction (see [`Tx::flat_guard`]).
    flat_ok: bool,
}

/// A native branch that ends the block.
#[derive(Clone, Copy)]
enum Term {
    /// To a known address.
    Direct(u64),
    /// To the first address if the i8 condition holds, else the second.
    Cond(Value, u64, u64),
    /// To wherever RIP points: the value for a native return, `None` after
    /// an interpreted branch (which may have changed modes).
    Indirect(Option<Value>),
}

impl<'f> Tx<'f> {
    fn new(
        mut b: FunctionBuilder<'f>,
        cpu: Value,
        ctx: Value,
        sigs: Sigs,
        smp: bool,
        bits: u32,
        start: u64,
    ) -> Self {
        let trusted = MemFlagsData::trusted();
        let regs = std::array::from_fn(|_| b.declare_var(types::I64));
        // The TLB tables for this privilege level: data reads, then writes
        // two tables further on.
        // The tables for the current privilege level (`Cpu::jit_tables`).
        let tlb_r = b.ins().load(types::I64, trusted, cpu, TLB_NOW);
        let tlb_w = b.ins().iadd_imm_s(tlb_r, 2 * tlb::TABLE);
        let jmp = b.ins().load(types::I64, trusted, cpu, JMP_NOW);
        let base = b.ins().load(types::I64, trusted, ctx, B_BASE);
        let insns = b.ins().load(types::I64, trusted, ctx, B_INSNS);
        let top = b.create_block();
        b.ins().jump(top, &[]);
        b.switch_to_block(top);
        Tx {
            b,
            cpu,
            sigs,
            smp,
            tlb_r,
            tlb_w,
            jmp,
            regs,
            state: [RegState::Unloaded; 16],
            lazy: None,
            lazy_dirty: false,
            at: 0,
            ctx,
            base,
            insns,
            term: None,
            chain_ok: true,
            start,
            top,
            exit_tail: None,
            sse_ok: false,
            bits,
            flat_ok: false,
        }
    }

    fn c64(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// Guest address `a` of the block as compiled, for the block being run:
    /// at the same offset from its first RIP.
    fn addr(&mut self, a: u64) -> Value {
        let off = a.wrapping_sub(self.start) as i64;
        let v = self.b.ins().iadd_imm_s(self.base, off);
        if self.bits == 32 {
            self.zext(v, 4)
        } else {
            v
        }
    }

    /// The size of a stack slot and of a near branch target.
    fn word(&self) -> u8 {
        if self.bits == 64 {
            8
        } else {
            4
        }
    }

    /// `sp` moved by `delta`, wrapped to the stack's size.
    fn sp_add(&mut self, sp: Value, delta: i64) -> Value {
        let v = self.b.ins().iadd_imm_s(sp, delta);
        if self.bits == 32 {
            self.zext(v, 4)
        } else {
            v
        }
    }

    /// The stack pointer as an address.
    fn sp_addr(&mut self) -> Value {
        let sp = self.gpr(4);
        if self.bits == 32 {
            self.zext(sp, 4)
        } else {
            sp
        }
    }

    /// 32-bit code: leaves for the interpreter before the instruction at
    /// `ip` unless CS, DS, ES and SS are flat (base 0, 4 GiB limit; the data
    /// segments present, writable and expand-up, SS 32-bit): what translated
    /// 32-bit code assumes, checked at its start and after every
    /// interpreted instruction (which may load a segment).
    fn flat_guard(&mut self, ip: u64) {
        if self.bits != 32 || self.flat_ok {
            return;
        }
        use super::{CS, DS, ES, SS};
        let t = MemFlagsData::trusted();
        let mut bad: Option<Value> = None;
        for s in [CS, DS, ES, SS] {
            let base = self.b.ins().load(types::I64, t, self.cpu, seg_base(s));
            let lim = self.b.ins().load(types::I32, t, self.cpu, seg_limit(s));
            let lim = self.b.ins().uextend(types::I64, lim);
            let lim = self.b.ins().bnot(lim);
            let lim = self.zext(lim, 4);
            let mut x = self.b.ins().bor(base, lim);
            if s != CS {
                let a = self.b.ins().load(types::I16, t, self.cpu, seg_attr(s));
                let a = self.b.ins().uextend(types::I64, a);
                let (mask, want) = if s == SS {
                    (0x9e | super::attr::DB as i64, 0x92 | super::attr::DB as i64)
                } else {
                    (0x9e, 0x92)
                };
                let a = self.b.ins().band_imm_s(a, mask);
                let a = self.b.ins().bxor_imm_s(a, want);
                x = self.b.ins().bor(x, a);
            }
            bad = Some(match bad {
                Some(b) => self.b.ins().bor(b, x),
                None => x,
            });
        }
        if let Some(bad) = bad {
            self.exit_if(bad, ip);
        }
        self.flat_ok = true;
    }

    /// The address of this block's instruction `i` (for the interpreter).
    fn insn_ptr(&mut self, i: usize) -> Value {
        self.b.ins().iadd_imm_s(self.insns, i as i64 * INSN_SIZE)
    }

    /// Enters the translated code of decoded block `blk` (not null).
    fn tail_enter(&mut self, blk: Value) {
        let code = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), blk, B_CODE);
        self.b
            .ins()
            .return_call_indirect(self.sigs.block, code, &[self.cpu, blk]);
    }

    // -- guest registers --

    fn gpr(&mut self, i: usize) -> Value {
        if self.state[i] == RegState::Unloaded {
            let v = self.b.ins().load(
                types::I64,
                MemFlagsData::trusted(),
                self.cpu,
                GPR + 8 * i as i32,
            );
            self.b.def_var(self.regs[i], v);
            self.state[i] = RegState::Clean;
        }
        self.b.use_var(self.regs[i])
    }

    /// Writes GPR `i`; memory gets it before the next memory access (see
    /// [`Tx::flush_regs`]) or exit.
    fn set_gpr(&mut self, i: usize, v: Value) {
        self.b.def_var(self.regs[i], v);
        self.state[i] = RegState::Dirty;
    }

    /// Stores the registers written since the last flush, on the main path
    /// before a memory access: its side exit then has only the flags to
    /// write back (small exits compile fast), and consecutive writes of a
    /// register cost one store. Instructions write registers only after
    /// their memory accesses, so an exit before an instruction never sees
    /// its writes.
    fn flush_regs(&mut self) {
        self.store_dirty(true);
    }

    /// Stores the dirty registers; marks them clean if `clean` (on the main
    /// path; not on a path that leaves it).
    fn store_dirty(&mut self, clean: bool) {
        for i in 0..16 {
            if self.state[i] == RegState::Dirty {
                let v = self.b.use_var(self.regs[i]);
                self.b
                    .ins()
                    .store(MemFlagsData::trusted(), v, self.cpu, GPR + 8 * i as i32);
                if clean {
                    self.state[i] = RegState::Clean;
                }
            }
        }
    }

    /// The low `size` bytes of `v`, zero-extended (32 bits by a move, not
    /// a mask from the constant pool).
    fn zext(&mut self, v: Value, size: u8) -> Value {
        match size {
            4 => {
                let n = self.b.ins().ireduce(types::I32, v);
                self.b.ins().uextend(types::I64, n)
            }
            8 => v,
            _ => self.b.ins().band_imm_s(v, mask(size)),
        }
    }

    /// Register `r` (zero-extended).
    fn reg(&mut self, r: Register) -> Value {
        let Some((i, shift, size)) = gpr_of(r) else {
            return self.c64(0);
        };
        let g = self.gpr(i);
        let g = if shift != 0 {
            self.b.ins().ushr_imm_s(g, shift)
        } else {
            g
        };
        if size < 8 {
            self.zext(g, size)
        } else {
            g
        }
    }

    /// Writes register `r` with x86 semantics (32-bit writes zero-extend,
    /// 8/16-bit writes merge).
    fn set_reg(&mut self, r: Register, v: Value) {
        let Some((i, shift, size)) = gpr_of(r) else {
            return;
        };
        let nv = match size {
            8 => v,
            4 => self.zext(v, 4),
            _ => {
                let g = self.gpr(i);
                let keep = self.b.ins().band_imm_s(g, !(mask(size) << shift));
                let mut x = self.b.ins().band_imm_s(v, mask(size));
                if shift != 0 {
                    x = self.b.ins().ishl_imm_s(x, shift);
                }
                self.b.ins().bor(keep, x)
            }
        };
        self.set_gpr(i, nv);
    }

    // -- write-back at calls and exits --

    /// Stores dirty registers and pending flags (the state stays as it is:
    /// for a path that leaves the main one).
    fn spill(&mut self) {
        self.store_dirty(false);
        self.store_lazy();
    }

    /// Stores the pending flags, if they are not in memory yet.
    fn store_lazy(&mut self) {
        if self.lazy_dirty {
            if let Some(l) = self.lazy {
                let t = MemFlagsData::trusted();
                let op = self.b.ins().iconst(types::I8, l.op as u8 as i64);
                let size = self.b.ins().iconst(types::I8, l.size as i64);
                let cpu = self.cpu;
                self.b.ins().store(t, op, cpu, F_OP);
                self.b.ins().store(t, size, cpu, F_SIZE);
                self.b.ins().store(t, l.dst, cpu, F_DST);
                self.b.ins().store(t, l.src, cpu, F_SRC);
                self.b.ins().store(t, l.res, cpu, F_RES);
                self.b.ins().store(t, l.aux, cpu, F_AUX);
            }
        }
    }

    /// Sets the arithmetic flags in `mask` to those of `v`, keeping the
    /// others (which become eager in memory).
    fn set_flags(&mut self, v: Value, mask: u64) {
        self.store_lazy();
        let f = self.c64(h_set_flags as *const () as usize as i64);
        let m = self.c64(mask as i64);
        self.b
            .ins()
            .call_indirect(self.sigs.set_flags, f, &[self.cpu, v, m]);
        self.lazy = None;
        self.lazy_dirty = false;
    }

    /// Spills on the main path: memory is up to date afterwards.
    fn sync(&mut self) {
        self.spill();
        for s in self.state.iter_mut() {
            if *s == RegState::Dirty {
                *s = RegState::Clean;
            }
        }
        self.lazy_dirty = false;
    }

    /// Adds `n` (an i64 value) to the instruction count.
    fn count(&mut self, n: Value) {
        let t = MemFlagsData::trusted();
        let ic = self.b.ins().load(types::I64, t, self.cpu, ICOUNT);
        let ic = self.b.ins().iadd(ic, n);
        self.b.ins().store(t, ic, self.cpu, ICOUNT);
    }

    /// Returns to the run loop after the block ran to its end.
    fn ret_normal(&mut self) {
        let me = self.ctx;
        self.b
            .ins()
            .store(MemFlagsData::trusted(), me, self.cpu, LAST);
        let z = self.c64(0);
        self.b.ins().return_(&[z]);
    }

    /// True (i8) when the run loop must look before another block runs:
    /// the budget is nearly spent, an exit was requested, another vCPU
    /// changed code, or an interrupt or event is deliverable.
    ///
    /// With `full` false only the budget is checked: for a forward branch
    /// within the page, as a run of those must end within the page (so
    /// events are still noticed at the next backward or cross-page branch).
    fn attention(&mut self, full: bool) -> Value {
        let t = MemFlagsData::trusted();
        let cpu = self.cpu;
        let ic = self.b.ins().load(types::I64, t, cpu, ICOUNT);
        let lim = self.b.ins().load(types::I64, t, cpu, CHAIN_LIMIT);
        let mut a = self.b.ins().icmp(IntCC::UnsignedGreaterThan, ic, lim);
        if !full {
            return a;
        }
        for off in [EXIT_PTR, CODE_PTR] {
            let p = self.b.ins().load(types::I64, t, cpu, off);
            let v = self.b.ins().load(types::I8, t, p, 0);
            let nz = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0);
            a = self.b.ins().bor(a, nz);
        }
        let p = self.b.ins().load(types::I64, t, cpu, IRQ_PTR);
        let irq = self.b.ins().load(types::I8, t, p, 0);
        let irq = self.b.ins().uextend(types::I64, irq);
        let bits = self.b.ins().load(types::I64, t, cpu, F_BITS);
        // Bit 0 (INTR) counts only with IF set; bit 1 (event) always.
        let iff = self.b.ins().ushr_imm_s(bits, 9);
        let iff = self.b.ins().band_imm_s(iff, 1);
        let m = self.b.ins().iadd_imm_s(iff, super::PENDING_EVENT as i64);
        let hit = self.b.ins().band(irq, m);
        let nz = self.b.ins().icmp_imm_s(IntCC::NotEqual, hit, 0);
        self.b.ins().bor(a, nz)
    }

    /// The end of a block that ran to its end: spills, sets RIP, counts `n`
    /// instructions, and goes on to the successor directly where it is
    /// known and nothing needs the run loop.
    fn finish(&mut self, rip: Option<Value>, n: u64) {
        self.spill();
        if let Some(r) = rip {
            self.b
                .ins()
                .store(MemFlagsData::trusted(), r, self.cpu, RIP);
        }
        let nv = self.c64(n as i64);
        self.count(nv);
        match (self.term, self.chain_ok) {
            (Some(Term::Direct(t)), true) => self.goto(t, 0),
            (Some(Term::Cond(c, t, f)), true) => {
                let taken = self.side();
                let not = self.side();
                self.b.ins().brif(c, taken, &[], not, &[]);
                self.b.switch_to_block(taken);
                self.goto(t, 0);
                self.b.switch_to_block(not);
                self.goto(f, 1);
            }
            (Some(Term::Indirect(rip)), true) => {
                let attn = self.attention(true);
                let back = self.side();
                let go = self.side();
                self.b.ins().brif(attn, back, &[], go, &[]);
                self.b.switch_to_block(go);
                match rip {
                    Some(r) => self.enter_cached(r, back),
                    None => self.enter_looked_up(back),
                }
                self.b.switch_to_block(back);
                self.ret_normal();
            }
            _ => self.ret_normal(),
        }
    }

    /// Enters the translated block for `rip` from the jump cache, else as
    /// [`Tx::enter_looked_up`].
    fn enter_cached(&mut self, rip: Value, back: Block) {
        if self.bits != 64 {
            // The jump cache holds 64-bit code only.
            self.enter_looked_up(back);
            return;
        }
        let t = MemFlagsData::trusted();
        let hi = self.b.ins().ushr_imm_s(rip, 12);
        let hi = self.b.ins().band_imm_s(hi, 63);
        let hi = self.b.ins().ishl_imm_s(hi, 6);
        let a = self.b.ins().ushr_imm_s(rip, 2);
        let c = self.b.ins().ushr_imm_s(rip, 8);
        let lo = self.b.ins().bxor(a, c);
        let lo = self.b.ins().band_imm_s(lo, 63);
        let idx = self.b.ins().bor(hi, lo);
        let off = self.b.ins().imul_imm_s(idx, JMP_ENTRY);
        let ent = self.b.ins().iadd(self.jmp, off);
        let tag = self.b.ins().load(types::I64, t, ent, 0);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, rip);
        let gen = self.b.ins().load(types::I64, t, ent, JMP_E_GEN);
        let cur = self.b.ins().load(types::I64, t, self.cpu, JMP_GEN);
        let now = self.b.ins().icmp(IntCC::Equal, gen, cur);
        let hit = self.b.ins().band(hit, now);
        let jump = self.side();
        let miss = self.side();
        self.b.ins().brif(hit, jump, &[], miss, &[]);
        self.b.switch_to_block(jump);
        let code = self.b.ins().load(types::I64, t, ent, JMP_CODE);
        let blk = self.b.ins().load(types::I64, t, ent, JMP_BLOCK);
        self.b
            .ins()
            .return_call_indirect(self.sigs.block, code, &[self.cpu, blk]);
        self.b.switch_to_block(miss);
        self.enter_looked_up(back);
    }

    /// Enters the translated block at RIP if `h_lookup` finds one, else
    /// continues at `back`.
    fn enter_looked_up(&mut self, back: Block) {
        let f = self.c64(h_lookup as *const () as usize as i64);
        let call = self.b.ins().call_indirect(self.sigs.lookup, f, &[self.cpu]);
        let blk = self.b.inst_results(call)[0];
        let jump = self.side();
        self.b.ins().brif(blk, jump, &[], back, &[]);
        self.b.switch_to_block(jump);
        self.tail_enter(blk);
    }

    /// Continues at `target` (RIP already stored): loops to the block's own
    /// start, or enters the translated block in link cell `cell`, unless the
    /// run loop must look first.
    fn goto(&mut self, target: u64, cell: i32) {
        let forward = target > self.start && (target ^ self.start) & !0xfff == 0;
        let attn = self.attention(!forward);
        let back = self.side();
        let go = self.side();
        self.b.ins().brif(attn, back, &[], go, &[]);
        self.b.switch_to_block(go);
        if target == self.start {
            self.b.ins().jump(self.top, &[]);
        } else {
            let jump = self.side();
            let lookup = self.side();
            let f = self.b.ins().load(
                types::I64,
                MemFlagsData::trusted(),
                self.ctx,
                B_LINKS + 8 * cell,
            );
            self.b.ins().brif(f, jump, &[], lookup, &[]);
            self.b.switch_to_block(jump);
            self.tail_enter(f);
            // Not linked (another page, or not seen yet from here).
            self.b.switch_to_block(lookup);
            let r = self.addr(target);
            self.enter_cached(r, back);
        }
        self.b.switch_to_block(back);
        self.ret_normal();
    }

    /// A new block on the side (the current one must be terminated before
    /// switching back).
    fn side(&mut self) -> Block {
        self.b.create_block()
    }

    // -- memory --

    /// Effective address (offset in the segment) of `d`'s memory operand.
    fn ea(&mut self, d: &Insn) -> Value {
        let disp = d.ins.memory_displacement64();
        let mut v = if d.ins.memory_base() == Register::RIP {
            self.addr(disp)
        } else {
            self.c64(disp as i64)
        };
        if d.ea_base != Register::None {
            let r = self.reg(d.ea_base);
            v = self.b.ins().iadd(v, r);
        }
        if d.ea_index != Register::None {
            let r = self.reg(d.ea_index);
            let r = self.b.ins().ishl_imm_s(r, d.ea_shift as i64);
            v = self.b.ins().iadd(v, r);
        }
        if d.amask != u64::MAX {
            v = self.b.ins().band_imm_s(v, d.amask as i64);
        }
        v
    }

    /// Linear address of `d`'s memory operand (64-bit mode: only FS and GS
    /// have a base).
    fn mem(&mut self, d: &Insn) -> Value {
        let s = super::operand::seg_index(d.ins.memory_segment());
        let mut v = self.ea(d);
        if s >= FS {
            let base =
                self.b
                    .ins()
                    .load(types::I64, MemFlagsData::trusted(), self.cpu, seg_base(s));
            v = self.b.ins().iadd(v, base);
        }
        v
    }

    /// The TLB entry for `lin` in `table` and whether it maps an access of
    /// `size` bytes there.
    fn tlb_hit(&mut self, table: Value, lin: Value, size: u8) -> (Value, Value) {
        // The entry of `lin`'s page, pre-scaled: (lin >> 12) % SIZE * ENTRY.
        let shift = 12 - tlb::ENTRY.trailing_zeros() as i64;
        let idx = self.b.ins().ushr_imm_s(lin, shift);
        let idx = self
            .b
            .ins()
            .band_imm_s(idx, (super::mmu::TLB_SIZE as i64 - 1) * tlb::ENTRY);
        let ent = self.b.ins().iadd(table, idx);
        let tag = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), ent, tlb::TAG);
        // The last byte's page must be the tag: a tag in this slot is a
        // page with the same index, so it can only be `lin`'s own page, and
        // the access then does not cross into the next.
        let last = self.b.ins().iadd_imm_s(lin, size as i64 - 1);
        let page = self.b.ins().band_imm_s(last, !0xfff);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, page);
        (ent, hit)
    }

    /// Leaves the block before the current instruction (at `ip`) for the
    /// interpreter, which runs the rest of this block once: for accesses
    /// the TLB does not map for the fast path (first touch, page-crossing,
    /// device memory, pages holding code, faults).
    fn side_exit(&mut self, ip: u64) {
        self.spill();
        let tail = match self.exit_tail {
            Some(b) => b,
            None => {
                // One shared tail: RIP and count come as parameters.
                let here = self.b.current_block();
                let b = self.side();
                let rip = self.b.append_block_param(b, types::I64);
                let n = self.b.append_block_param(b, types::I64);
                self.b.switch_to_block(b);
                let t = MemFlagsData::trusted();
                self.b.ins().store(t, rip, self.cpu, RIP);
                self.count(n);
                let one = self.b.ins().iconst(types::I8, 1);
                self.b.ins().store(t, one, self.cpu, SKIP);
                let v = self.c64(EARLY as i64);
                self.b.ins().return_(&[v]);
                if let Some(h) = here {
                    self.b.switch_to_block(h);
                }
                self.exit_tail = Some(b);
                b
            }
        };
        let r = self.addr(ip);
        let n = self.c64(self.at as i64);
        self.b
            .ins()
            .jump(tail, &[BlockArg::Value(r), BlockArg::Value(n)]);
    }

    /// Leaves for the interpreter before the instruction at `ip` if `cond`
    /// (non-zero) holds.
    fn exit_if(&mut self, cond: Value, ip: u64) {
        let out = self.side();
        let go = self.side();
        self.b.ins().brif(cond, out, &[], go, &[]);
        self.b.switch_to_block(out);
        self.side_exit(ip);
        self.b.switch_to_block(go);
    }

    /// The host address of an access of `size` bytes at linear `lin` where
    /// `table` (the read or the write TLB) maps it, else leaves through
    /// [`Tx::side_exit`].
    fn host_address(&mut self, table: Value, lin: Value, size: u8, ip: u64) -> Value {
        self.flush_regs();
        let (ent, hit) = self.tlb_hit(table, lin, size);
        let fast = self.side();
        let slow = self.side();
        self.b.ins().brif(hit, fast, &[], slow, &[]);
        self.b.switch_to_block(slow);
        self.side_exit(ip);
        self.b.switch_to_block(fast);
        let add = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), ent, tlb::ADDEND);
        self.b.ins().iadd(lin, add)
    }

    /// Reads `size` bytes at linear `lin`, zero-extended to 64 bits.
    fn load(&mut self, lin: Value, size: u8, ip: u64) -> Value {
        let host = self.host_address(self.tlb_r, lin, size, ip);
        let flags = MemFlagsData::new().with_notrap();
        let v = self.b.ins().load(int_type(size), flags, host, 0);
        if size < 8 {
            self.b.ins().uextend(types::I64, v)
        } else {
            v
        }
    }

    /// Writes the low `size` bytes of `v` at linear `lin` (the write TLB
    /// never maps a page holding code).
    fn store(&mut self, lin: Value, size: u8, v: Value, ip: u64) {
        let host = self.host_address(self.tlb_w, lin, size, ip);
        let nv = if size < 8 {
            self.b.ins().ireduce(int_type(size), v)
        } else {
            v
        };
        self.b
            .ins()
            .store(MemFlagsData::new().with_notrap(), nv, host, 0);
    }

    // -- operands --

    fn loc(&mut self, d: &Insn, i: u32) -> Loc {
        match d.ins.op_kind(i) {
            OpKind::Register => Loc::Reg(d.ins.op_register(i)),
            _ => {
                let lin = self.mem(d);
                Loc::Mem(lin)
            }
        }
    }

    fn read_loc(&mut self, d: &Insn, l: Loc, size: u8) -> Value {
        match l {
            Loc::Reg(r) => self.reg(r),
            Loc::Mem(lin) => self.load(lin, size, d.ins.ip()),
        }
    }

    fn write_loc(&mut self, d: &Insn, l: Loc, size: u8, v: Value) {
        match l {
            Loc::Reg(r) => self.set_reg(r, v),
            Loc::Mem(lin) => self.store(lin, size, v, d.ins.ip()),
        }
    }

    /// Operand `i` (register, memory or immediate) masked to `size`.
    fn read(&mut self, d: &Insn, i: u32, size: u8) -> Value {
        let k = d.ins.op_kind(i);
        if is_imm(k) {
            let v = if i == d.imm_op as u32 {
                d.imm
            } else {
                d.ins.immediate(i)
            };
            return self.c64((v & super::flags::size_mask(size)) as i64);
        }
        let l = self.loc(d, i);
        self.read_loc(d, l, size)
    }

    // -- flags --

    fn set_lazy(&mut self, op: FlagOp, size: u8, dst: Value, src: Value, res: Value, aux: Value) {
        self.lazy = Some(Lazy {
            op,
            carry: false,
            size,
            dst,
            src,
            res,
            aux,
        });
        self.lazy_dirty = true;
    }

    fn narrow(&mut self, v: Value, size: u8) -> Value {
        if size < 8 {
            self.b.ins().ireduce(int_type(size), v)
        } else {
            v
        }
    }

    fn neg_narrow(&mut self, v: Value, size: u8) -> Value {
        let n = self.narrow(v, size);
        self.b.ins().icmp_imm_s(IntCC::SignedLessThan, n, 0)
    }

    fn i8c(&mut self, v: bool) -> Value {
        self.b.ins().iconst(types::I8, v as i64)
    }

    fn cf(&mut self, l: Lazy) -> Value {
        match l.op {
            FlagOp::Add | FlagOp::Sub => {
                let (a, b) = if l.op == FlagOp::Add {
                    (l.res, l.dst)
                } else {
                    (l.dst, l.src)
                };
                let lt = self.b.ins().icmp(IntCC::UnsignedLessThan, a, b);
                if !l.carry {
                    return lt;
                }
                // With a carry-in, equality carries too.
                let eq = self.b.ins().icmp(IntCC::Equal, a, b);
                let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, l.aux, 0);
                let eqc = self.b.ins().band(eq, c);
                self.b.ins().bor(lt, eqc)
            }
            FlagOp::Logic | FlagOp::Eager => self.i8c(false),
            FlagOp::Inc | FlagOp::Dec | FlagOp::Mul => {
                self.b.ins().icmp_imm_s(IntCC::NotEqual, l.aux, 0)
            }
            FlagOp::Shift => {
                let a = self.b.ins().band_imm_s(l.aux, 1);
                self.b.ins().icmp_imm_s(IntCC::NotEqual, a, 0)
            }
        }
    }

    fn zf(&mut self, l: Lazy) -> Value {
        if l.op == FlagOp::Mul {
            return self.i8c(false);
        }
        self.b.ins().icmp_imm_s(IntCC::Equal, l.res, 0)
    }

    fn sf(&mut self, l: Lazy) -> Value {
        self.neg_narrow(l.res, l.size)
    }

    fn of(&mut self, l: Lazy) -> Value {
        let sb = super::flags::sign_bit(l.size) as i64;
        match l.op {
            FlagOp::Add => {
                let a = self.b.ins().bxor(l.dst, l.res);
                let b = self.b.ins().bxor(l.src, l.res);
                let t = self.b.ins().band(a, b);
                self.neg_narrow(t, l.size)
            }
            FlagOp::Sub => {
                let a = self.b.ins().bxor(l.dst, l.src);
                let b = self.b.ins().bxor(l.dst, l.res);
                let t = self.b.ins().band(a, b);
                self.neg_narrow(t, l.size)
            }
            FlagOp::Logic | FlagOp::Eager => self.i8c(false),
            FlagOp::Inc => self.b.ins().icmp_imm_s(IntCC::Equal, l.res, sb),
            FlagOp::Dec => self.b.ins().icmp_imm_s(IntCC::Equal, l.res, sb - 1),
            FlagOp::Shift => {
                let a = self.b.ins().band_imm_s(l.aux, super::flags::OF as i64);
                self.b.ins().icmp_imm_s(IntCC::NotEqual, a, 0)
            }
            FlagOp::Mul => self.b.ins().icmp_imm_s(IntCC::NotEqual, l.aux, 0),
        }
    }

    fn pf(&mut self, l: Lazy) -> Value {
        let lo = self.b.ins().band_imm_s(l.res, 0xff);
        let n = self.b.ins().popcnt(lo);
        let odd = self.b.ins().band_imm_s(n, 1);
        self.b.ins().icmp_imm_s(IntCC::Equal, odd, 0)
    }

    /// Condition `cc` (Jcc's low nibble) as an i8 0/1.
    fn cond(&mut self, cc: u8) -> Value {
        let Some(l) = self.lazy else {
            let f = self.c64(h_cond as *const () as usize as i64);
            let ccv = self.b.ins().iconst(types::I32, cc as i64);
            let call = self
                .b
                .ins()
                .call_indirect(self.sigs.cond, f, &[self.cpu, ccv]);
            let r = self.b.inst_results(call)[0];
            return self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        };
        let neg = cc & 1 != 0;
        if l.op == FlagOp::Sub && !l.carry {
            let (a, b) = (l.dst, l.src);
            let direct = match cc >> 1 {
                1 => Some((IntCC::UnsignedLessThan, false)),
                2 => None,
                3 => Some((IntCC::UnsignedLessThanOrEqual, false)),
                6 => Some((IntCC::SignedLessThan, true)),
                7 => Some((IntCC::SignedLessThanOrEqual, true)),
                _ => None,
            };
            if let Some((c, signed)) = direct {
                let c = if neg { c.complement() } else { c };
                let (a, b) = if signed {
                    (self.narrow(a, l.size), self.narrow(b, l.size))
                } else {
                    (a, b)
                };
                return self.b.ins().icmp(c, a, b);
            }
        }
        let r = match cc >> 1 {
            0 => self.of(l),
            1 => self.cf(l),
            2 => self.zf(l),
            3 => {
                let c = self.cf(l);
                let z = self.zf(l);
                self.b.ins().bor(c, z)
            }
            4 => self.sf(l),
            5 => self.pf(l),
            6 => {
                let s = self.sf(l);
                let o = self.of(l);
                self.b.ins().bxor(s, o)
            }
            _ => {
                let s = self.sf(l);
                let o = self.of(l);
                let x = self.b.ins().bxor(s, o);
                let z = self.zf(l);
                self.b.ins().bor(x, z)
            }
        };
        if neg {
            self.b.ins().bxor_imm_s(r, 1)
        } else {
            r
        }
    }

    /// The current CF as an i64 0/1.
    fn cf64(&mut self) -> Value {
        let c = match self.lazy {
            Some(l) => self.cf(l),
            None => self.cond(2),
        };
        self.b.ins().uextend(types::I64, c)
    }

    // -- instructions --

    /// Translates the block; returns the RIPs its link cells stand for.
    fn block(&mut self, insns: &[Insn]) -> [Option<u64>; 2] {
        let n = insns.len();
        let mut rip: Option<Value> = None;
        let mut rip_set = false;
        for (i, d) in insns.iter().enumerate() {
            self.at = i;
            self.term = None;
            if native(d, self.smp, self.bits) {
                self.flat_guard(d.ins.ip());
                rip = self.native(d);
                rip_set = false;
            } else {
                if d.ins.is_privileged() {
                    // It may change paging or modes: the successor must be
                    // looked up afresh.
                    self.chain_ok = false;
                }
                self.sync();
                let f = self.c64(h_interp as *const () as usize as i64);
                let p = self.insn_ptr(i);
                let call = self
                    .b
                    .ins()
                    .call_indirect(self.sigs.interp, f, &[self.cpu, p]);
                let st = self.b.inst_results(call)[0];
                self.state = [RegState::Unloaded; 16];
                self.lazy = None;
                // It may have changed CR0, CR4 or a segment.
                self.sse_ok = false;
                self.flat_ok = false;
                let out = self.side();
                let cont = self.side();
                self.b.ins().brif(st, out, &[], cont, &[]);
                self.b.switch_to_block(out);
                // 1 → stopped before this instruction, 2 → after it.
                let st64 = self.b.ins().uextend(types::I64, st);
                let cnt = self.b.ins().iadd_imm_s(st64, i as i64 - 1);
                self.count(cnt);
                let v = self.c64(EARLY as i64);
                self.b.ins().return_(&[v]);
                self.b.switch_to_block(cont);
                rip = None;
                rip_set = true;
                if i + 1 == n {
                    // The interpreter set RIP: go on from there.
                    self.term = Some(match d.ins.flow_control() {
                        iced_x86::FlowControl::Next => Term::Direct(d.ins.next_ip()),
                        _ => Term::Indirect(None),
                    });
                }
            }
        }
        let last = &insns[n - 1];
        let final_rip = if rip_set {
            None
        } else {
            if rip.is_none() {
                // Falls through to the next block.
                self.term = Some(Term::Direct(last.ins.next_ip()));
            }
            Some(match rip {
                Some(r) => r,
                None => self.addr(last.ins.next_ip()),
            })
        };
        let rips = match self.term {
            Some(Term::Direct(t)) => [Some(t), None],
            Some(Term::Cond(_, t, f)) => [Some(t), Some(f)],
            Some(Term::Indirect(_)) | None => [None; 2],
        };
        self.finish(final_rip, n as u64);
        if self.chain_ok {
            rips
        } else {
            [None; 2]
        }
    }

    /// SHL/SHR/SAR of the `s`-byte value `v` by `cnt` (1 ≤ cnt < 8·s):
    /// the unmasked result, and CF and OF in bit 0 of their values (OF as
    /// for a count of 1, as the interpreter computes it).
    fn shift_value(&mut self, m: M, s: u8, v: Value, cnt: Value) -> (Value, Value, Value) {
        let w = s as i64 * 8;
        let one_less = self.b.ins().iadd_imm_s(cnt, -1);
        let msb = self.b.ins().ushr_imm_s(v, w - 1);
        match m {
            M::Shl => {
                let r = self.b.ins().ishl(v, cnt);
                let wc = self.c64(w);
                let back = self.b.ins().isub(wc, cnt);
                let cf = self.b.ins().ushr(v, back);
                let hi = self.b.ins().ushr_imm_s(v, w - 2);
                (r, cf, self.b.ins().bxor(msb, hi))
            }
            M::Shr => {
                let r = self.b.ins().ushr(v, cnt);
                let cf = self.b.ins().ushr(v, one_less);
                (r, cf, msb)
            }
            _ => {
                let sv = if s < 8 {
                    let n = self.narrow(v, s);
                    self.b.ins().sextend(types::I64, n)
                } else {
                    v
                };
                let r = self.b.ins().sshr(sv, cnt);
                let cf = self.b.ins().sshr(sv, one_less);
                (r, cf, self.c64(0))
            }
        }
    }

    /// SHL/SHR/SAR of a 32/64-bit register by CL: a count of 0 changes
    /// neither the flags nor the value (but a 32-bit register is still
    /// written, so zero-extended); flags go to memory either way.
    fn shift_cl(&mut self, d: &Insn) {
        let s = d.osize;
        let w = s as i64 * 8;
        let dst = d.ins.op0_register();
        let cl = self.reg(Register::CL);
        let cnt = self.b.ins().band_imm_s(cl, w - 1);
        let v = self.reg(dst);
        // Whatever happens, the flags are in memory after this.
        self.spill();
        self.lazy = None;
        self.lazy_dirty = false;
        let zero = self.side();
        let shift = self.side();
        let merge = self.side();
        self.b.ins().brif(cnt, shift, &[], zero, &[]);

        self.b.switch_to_block(zero);
        if s == 4 {
            self.set_reg(dst, v);
        }
        self.b.ins().jump(merge, &[]);

        self.b.switch_to_block(shift);
        let (r, cf, of) = self.shift_value(d.ins.mnemonic(), s, v, cnt);
        let r = self.zext(r, s);
        let cf = self.b.ins().band_imm_s(cf, 1);
        let of = self.b.ins().band_imm_s(of, 1);
        let of = self.b.ins().ishl_imm_s(of, 11);
        let aux = self.b.ins().bor(cf, of);
        let t = MemFlagsData::trusted();
        let op = self.b.ins().iconst(types::I8, FlagOp::Shift as u8 as i64);
        let size = self.b.ins().iconst(types::I8, s as i64);
        let cpu = self.cpu;
        self.b.ins().store(t, op, cpu, F_OP);
        self.b.ins().store(t, size, cpu, F_SIZE);
        self.b.ins().store(t, v, cpu, F_DST);
        self.b.ins().store(t, v, cpu, F_SRC);
        self.b.ins().store(t, r, cpu, F_RES);
        self.b.ins().store(t, aux, cpu, F_AUX);
        self.set_reg(dst, r);
        self.b.ins().jump(merge, &[]);

        self.b.switch_to_block(merge);
    }

    /// Continues if branch target `t` is valid: canonical in 64-bit code
    /// (else the interpreter runs the instruction, raising #GP, and the
    /// block ends); within the flat 4 GiB code segment of 32-bit code.
    fn check_target(&mut self, t: Value) {
        if self.bits == 64 {
            self.canonical_or_interpret(t);
        }
    }

    /// Continues if branch target `t` is canonical; else has the
    /// interpreter run the instruction (which raises #GP) and leaves.
    fn canonical_or_interpret(&mut self, t: Value) {
        let sh = self.b.ins().ishl_imm_s(t, 16);
        let ext = self.b.ins().sshr_imm_s(sh, 16);
        let ok = self.b.ins().icmp(IntCC::Equal, ext, t);
        let bad = self.side();
        let good = self.side();
        self.b.ins().brif(ok, good, &[], bad, &[]);
        self.b.switch_to_block(bad);
        self.spill();
        let f = self.c64(h_interp as *const () as usize as i64);
        let p = self.insn_ptr(self.at);
        self.b
            .ins()
            .call_indirect(self.sigs.interp, f, &[self.cpu, p]);
        let n = self.c64(self.at as i64);
        self.count(n);
        let v = self.c64(EARLY as i64);
        self.b.ins().return_(&[v]);
        self.b.switch_to_block(good);
    }

    /// Emits a native instruction; returns the new RIP if it branches.
    fn native(&mut self, d: &Insn) -> Option<Value> {
        let ins = &d.ins;
        let s = d.osize;
        let mnem = ins.mnemonic();
        let next = ins.next_ip();
        if sse::native(d) {
            self.sse(d);
            return None;
        }
        match mnem {
            M::Nop => {}
            M::Mov => {
                let v = self.read(d, 1, s);
                let l = self.loc(d, 0);
                self.write_loc(d, l, s, v);
                return None;
            }
            M::Movzx | M::Movsx | M::Movsxd => {
                let ss = match ins.op1_kind() {
                    OpKind::Register => ins.op1_register().size() as u8,
                    _ => ins.memory_size().size() as u8,
                };
                let mut v = self.read(d, 1, ss);
                if mnem != M::Movzx && ss < 8 {
                    let n = self.narrow(v, ss);
                    v = self.b.ins().sextend(types::I64, n);
                }
                self.set_reg(ins.op0_register(), v);
            }
            M::Lea => {
                let v = self.ea(d);
                let v = if s < 8 { self.zext(v, s) } else { v };
                self.set_reg(ins.op0_register(), v);
            }
            M::Adc | M::Sbb => {
                let cf = self.cf64();
                let l = self.loc(d, 0);
                let a = self.read_loc(d, l, s);
                let b = self.read(d, 1, s);
                let r = if mnem == M::Adc {
                    let t = self.b.ins().iadd(a, b);
                    self.b.ins().iadd(t, cf)
                } else {
                    let t = self.b.ins().isub(a, b);
                    self.b.ins().isub(t, cf)
                };
                let r = self.zext(r, s);
                self.write_loc(d, l, s, r);
                let op = if mnem == M::Adc {
                    FlagOp::Add
                } else {
                    FlagOp::Sub
                };
                self.set_lazy(op, s, a, b, r, cf);
                if let Some(z) = self.lazy.as_mut() {
                    z.carry = true;
                }
            }
            M::Add | M::Sub | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
                let l = self.loc(d, 0);
                let a = self.read_loc(d, l, s);
                let b = self.read(d, 1, s);
                let r = match mnem {
                    M::Add => self.b.ins().iadd(a, b),
                    M::Sub | M::Cmp => self.b.ins().isub(a, b),
                    M::And | M::Test => self.b.ins().band(a, b),
                    M::Or => self.b.ins().bor(a, b),
                    _ => self.b.ins().bxor(a, b),
                };
                let r = if s < 8 && matches!(mnem, M::Add | M::Sub | M::Cmp) {
                    self.zext(r, s)
                } else {
                    r
                };
                let writes = !matches!(mnem, M::Cmp | M::Test);
                if writes {
                    self.write_loc(d, l, s, r);
                }
                let zero = self.c64(0);
                let op = match mnem {
                    M::Add => FlagOp::Add,
                    M::Sub | M::Cmp => FlagOp::Sub,
                    _ => FlagOp::Logic,
                };
                self.set_lazy(op, s, a, b, r, zero);
                return None;
            }
            M::Neg | M::Not => {
                let l = self.loc(d, 0);
                let a = self.read_loc(d, l, s);
                let r = if mnem == M::Neg {
                    self.b.ins().ineg(a)
                } else {
                    self.b.ins().bnot(a)
                };
                let r = self.zext(r, s);
                self.write_loc(d, l, s, r);
                if mnem == M::Neg {
                    // NEG sets the flags of 0 - a.
                    let zero = self.c64(0);
                    self.set_lazy(FlagOp::Sub, s, zero, a, r, zero);
                }
            }
            M::Inc | M::Dec => {
                let cf = self.cf64();
                let l = self.loc(d, 0);
                let a = self.read_loc(d, l, s);
                let r = if mnem == M::Inc {
                    self.b.ins().iadd_imm_s(a, 1)
                } else {
                    self.b.ins().iadd_imm_s(a, -1)
                };
                let r = if s < 8 { self.zext(r, s) } else { r };
                self.write_loc(d, l, s, r);
                let op = if mnem == M::Inc {
                    FlagOp::Inc
                } else {
                    FlagOp::Dec
                };
                self.set_lazy(op, s, a, a, r, cf);
                return None;
            }
            M::Rol | M::Ror => {
                let cnt = (d.imm & if s == 8 { 63 } else { 31 }) as u32;
                let w = s as u32 * 8;
                let l = self.loc(d, 0);
                let v = self.read_loc(d, l, s);
                let nv = self.narrow(v, s);
                let t = (cnt % w) as i64;
                let nr = if mnem == M::Rol {
                    self.b.ins().rotl_imm_s(nv, t)
                } else {
                    self.b.ins().rotr_imm_s(nv, t)
                };
                let r = if s < 8 {
                    self.b.ins().uextend(types::I64, nr)
                } else {
                    nr
                };
                self.write_loc(d, l, s, r);
                let msb_v = self.b.ins().ushr_imm_s(v, w as i64 - 1);
                let (cf, other) = if mnem == M::Rol {
                    let cf = self.b.ins().band_imm_s(r, 1);
                    (cf, self.b.ins().ushr_imm_s(v, w as i64 - 2))
                } else {
                    (self.b.ins().ushr_imm_s(r, w as i64 - 1), v)
                };
                let of = self.b.ins().bxor(msb_v, other);
                let of = self.b.ins().band_imm_s(of, 1);
                let of = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, of);
                // By an immediate count other than 1 into a register the
                // undefined OF stays as it was (as the interpreter does).
                let keep_of = cnt != 1 && matches!(l, Loc::Reg(_));
                let mask = if keep_of { 1 } else { 1 | 1 << 11 };
                self.set_flags(f, mask);
                return None;
            }
            M::Bsf | M::Bsr => {
                let v = self.read(d, 1, s);
                let idx = if mnem == M::Bsf {
                    self.b.ins().ctz(v)
                } else {
                    let z = self.b.ins().clz(v);
                    let c = self.c64(63);
                    self.b.ins().isub(c, z)
                };
                let dst = ins.op0_register();
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, v, 0);
                if let Some((i, _, _)) = gpr_of(dst) {
                    // A zero source leaves the destination as it was.
                    let old = self.gpr(i);
                    self.set_reg(dst, idx);
                    let new = self.gpr(i);
                    let kept = self.b.ins().select(zero, old, new);
                    self.set_gpr(i, kept);
                }
                // ZF for a zero source, PF from the index, the other flags
                // clear: the flags of a 16-bit logic result of 0, or of the
                // index with bit 8 set.
                let marked = self.b.ins().bor_imm_s(idx, 0x100);
                let z64 = self.c64(0);
                let res = self.b.ins().select(zero, z64, marked);
                self.set_lazy(FlagOp::Logic, 2, z64, z64, res, z64);
                return None;
            }
            M::Shl | M::Shr | M::Sar if ins.op1_kind() == OpKind::Register => {
                self.shift_cl(d);
            }
            M::Shl | M::Shr | M::Sar => {
                let cnt = (d.imm & if s == 8 { 63 } else { 31 }) as i64;
                let l = self.loc(d, 0);
                let v = self.read_loc(d, l, s);
                let cv = self.c64(cnt);
                let (r, cf, of) = self.shift_value(mnem, s, v, cv);
                let r = if s < 8 { self.zext(r, s) } else { r };
                let cf = self.b.ins().band_imm_s(cf, 1);
                let of = self.b.ins().band_imm_s(of, 1);
                let of = self.b.ins().ishl_imm_s(of, 11);
                let aux = self.b.ins().bor(cf, of);
                self.write_loc(d, l, s, r);
                self.set_lazy(FlagOp::Shift, s, v, v, r, aux);
                return None;
            }
            M::Imul => {
                let (a, b) = if ins.op_count() == 3 {
                    (self.read(d, 1, s), self.read(d, 2, s))
                } else {
                    (self.reg(ins.op0_register()), self.read(d, 1, s))
                };
                let (lo, ovf) = if s == 8 {
                    let lo = self.b.ins().imul(a, b);
                    let hi = self.b.ins().smulhi(a, b);
                    let sign = self.b.ins().sshr_imm_s(lo, 63);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, hi, sign))
                } else {
                    let na = self.narrow(a, s);
                    let sa = self.b.ins().sextend(types::I64, na);
                    let nb = self.narrow(b, s);
                    let sb = self.b.ins().sextend(types::I64, nb);
                    let p = self.b.ins().imul(sa, sb);
                    let np = self.narrow(p, s);
                    let sp = self.b.ins().sextend(types::I64, np);
                    let lo = self.zext(p, s);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, sp, p))
                };
                let ovf = self.b.ins().uextend(types::I64, ovf);
                self.set_reg(ins.op0_register(), lo);
                self.set_lazy(FlagOp::Mul, s, a, b, lo, ovf);
            }
            M::Push => {
                let w = self.word();
                let v = self.read(d, 0, w);
                let sp = self.sp_addr();
                let nsp = self.sp_add(sp, -(w as i64));
                self.store(nsp, w, v, ins.ip());
                self.set_gpr(4, nsp);
                return None;
            }
            M::Pop => {
                let w = self.word();
                let sp = self.sp_addr();
                let v = self.load(sp, w, ins.ip());
                let nsp = self.sp_add(sp, w as i64);
                self.set_gpr(4, nsp);
                self.set_reg(ins.op0_register(), v);
            }
            M::Jmp if matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32) => {
                self.term = Some(Term::Direct(d.imm));
                return Some(self.addr(d.imm));
            }
            M::Jmp => {
                let w = self.word();
                let t = self.read(d, 0, w);
                self.check_target(t);
                self.term = Some(Term::Indirect(Some(t)));
                return Some(t);
            }
            M::Call if !matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32) => {
                let w = self.word();
                let t = self.read(d, 0, w);
                self.check_target(t);
                let ret = self.addr(next);
                let sp = self.sp_addr();
                let nsp = self.sp_add(sp, -(w as i64));
                self.store(nsp, w, ret, ins.ip());
                self.set_gpr(4, nsp);
                self.term = Some(Term::Indirect(Some(t)));
                return Some(t);
            }
            M::Bswap => {
                let r = ins.op0_register();
                let v = self.reg(r);
                let v = if s == 4 {
                    let n = self.b.ins().ireduce(types::I32, v);
                    let n = self.b.ins().bswap(n);
                    self.b.ins().uextend(types::I64, n)
                } else {
                    self.b.ins().bswap(v)
                };
                self.set_reg(r, v);
            }
            M::Call => {
                let w = self.word();
                let ret = self.addr(next);
                let sp = self.sp_addr();
                let nsp = self.sp_add(sp, -(w as i64));
                self.store(nsp, w, ret, ins.ip());
                self.set_gpr(4, nsp);
                self.term = Some(Term::Direct(d.imm));
                return Some(self.addr(d.imm));
            }
            M::Ret => {
                let w = self.word();
                let sp = self.sp_addr();
                let t = self.load(sp, w, ins.ip());
                // A non-canonical return address: the interpreter raises
                // #GP with RSP unchanged.
                self.check_target(t);
                let nsp = self.sp_add(sp, w as i64);
                self.set_gpr(4, nsp);
                self.term = Some(Term::Indirect(Some(t)));
                return Some(t);
            }
            m if JCC.contains(&m) => {
                let c = self.cond(d.cc);
                let t = self.addr(d.imm);
                let f = self.addr(next);
                self.term = Some(Term::Cond(c, d.imm, next));
                return Some(self.b.ins().select(c, t, f));
            }
            m if SETCC.contains(&m) => {
                let c = self.cond(d.cc);
                let v = self.b.ins().uextend(types::I64, c);
                let l = self.loc(d, 0);
                self.write_loc(d, l, 1, v);
            }
            _ => {
                // CMOVcc: the source is read whatever the condition.
                let v = self.read(d, 1, s);
                let c = self.cond(d.cc);
                let cur = self.reg(ins.op0_register());
                let r = self.b.ins().select(c, v, cur);
                self.set_reg(ins.op0_register(), r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
