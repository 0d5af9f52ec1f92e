//! The execution loop: blocks of decoded instructions, cached by physical
//! address and dropped when the guest writes to their page.

use super::mmu::Access;
use super::{flags, Cpu, Exc, R};
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Executes one decoded instruction.
pub(crate) type Handler = fn(&mut Cpu, &Insn) -> R;

/// A decoded instruction with what the interpreter precomputed for it.
pub(crate) struct Insn {
    /// The decoded instruction.
    pub ins: Instruction,
    /// Its semantics.
    pub handler: Handler,
    /// The plain semantics when `handler` wraps them (LOCK-prefixed
    /// instructions on a multiprocessor run them atomically).
    pub inner: Handler,
    /// Operand size in bytes of the first explicit operand (0 if none).
    pub osize: u8,
    /// Address-size mask for memory operands (0xffff, 0xffff_ffff or all ones).
    pub amask: u64,
    /// Base register of the memory operand (`None` also for RIP-relative
    /// operands, whose displacement iced already made absolute).
    pub ea_base: Register,
    /// Index register of the memory operand, or `None`.
    pub ea_index: Register,
    /// log2 of the index scale.
    pub ea_shift: u8,
    /// Condition code (0..15, the low nibble of Jcc's opcode) of
    /// Jcc/SETcc/CMOVcc.
    pub cc: u8,
    /// Which operand `imm` belongs to (0xff: none).
    pub imm_op: u8,
    /// That operand's value: an immediate as encoded (sign-extended), or a
    /// near branch's target.
    pub imm: u64,
}

const MAX_BLOCK: usize = 64;

/// A straight-line run of instructions within one page.
pub(crate) struct Block {
    insns: Vec<Insn>,
    /// `insns`' first element (read by translated code).
    pub(crate) insns_ptr: *const Insn,
    /// RIP of the first instruction (read by translated code).
    pub(crate) base: u64,
    /// Physical address of the first instruction.
    phys: u64,
    /// For an instruction that crosses into the next page: that page's
    /// physical address (else `u64::MAX`).
    phys2: u64,
    /// In the cache (not a one-off decode of a page-straddling instruction).
    cached: bool,
    /// Blocks seen to follow this one in the same page: (RIP, block). Both
    /// lie in one physical page, so they leave the cache together.
    next: [std::cell::Cell<(u64, *const Block)>; 2],
    /// The code's bitness if the translator handles it (64, or 32 for
    /// protected-mode code, translated for flat segments), else 0.
    jit_bits: u32,
    /// Times run by the interpreter (u32::MAX: never translate).
    hits: std::cell::Cell<u32>,
    /// Left the cache (its code, if it comes from the compiling thread
    /// later, is not installed).
    dead: std::cell::Cell<bool>,
    /// The translation's entry (tail-call convention), 0 until the block
    /// got hot (read by translated code).
    pub(crate) code: std::cell::Cell<usize>,
    /// Translated successors (their `Block`s) entered directly, for the
    /// RIPs in `link_rips` (read by translated code).
    pub(crate) links: [std::cell::Cell<usize>; 2],
    link_rips: [std::cell::Cell<u64>; 2],
}

// SAFETY: a block is used by the one vCPU whose cache holds it; the raw
// successor pointers are only followed by that vCPU (see `Cpu::run`).
unsafe impl Send for Block {}
// SAFETY: as above; besides its vCPU only the vCPU's compiling thread
// touches a block, and it only reads `insns`, which never change (the cells
// the vCPU writes are other fields).
unsafe impl Sync for Block {}

impl Block {
    fn new(insns: Vec<Insn>, phys: u64, cached: bool, jit_bits: u32) -> Self {
        Block {
            insns_ptr: insns.as_ptr(),
            base: insns.first().map_or(0, |d| d.ins.ip()),
            phys,
            phys2: u64::MAX,
            insns,
            cached,
            next: Default::default(),
            jit_bits,
            hits: std::cell::Cell::new(0),
            dead: std::cell::Cell::new(false),
            code: std::cell::Cell::new(0),
            links: Default::default(),
            link_rips: [
                std::cell::Cell::new(u64::MAX),
                std::cell::Cell::new(u64::MAX),
            ],
        }
    }

    /// The successor recorded for `rip`, if any.
    #[inline(always)]
    fn successor(&self, rip: u64) -> Option<*const Block> {
        self.next
            .iter()
            .map(|c| c.get())
            .find(|(r, b)| *r == rip && !b.is_null())
            .map(|(_, b)| b)
    }

    /// The decoded instructions.
    pub(crate) fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Takes translated code made for another block decoded from the same
    /// bytes.
    fn adopt(&self, t: &Translation) {
        self.code.set(t.code);
        for (c, r) in self.link_rips.iter().zip(t.links) {
            c.set(r.map_or(u64::MAX, |r| self.base.wrapping_add(r)));
        }
    }

    /// Records `b` as the block that follows at `rip`.
    fn link(&self, rip: u64, b: *const Block) {
        let slot = if self.next[0].get().1.is_null() { 0 } else { 1 };
        self.next[slot].set((rip, b));
    }
}

type Key = (u64, u64, u32);

/// Translated code for the block of some bitness decoded at a physical
/// address, shared by every block decoded from there in that bitness (see
/// [`super::jit::EnterFn`]).
#[derive(Clone, Copy)]
struct Translation {
    phys: u64,
    bits: u32,
    code: usize,
    /// Instructions in the block, and which of them are native
    /// ([`super::jit::native_mask`]).
    len: usize,
    native: u64,
    /// RIPs of the link cells, as offsets from the block's first RIP.
    links: [Option<u64>; 2],
}

/// A fast hasher for block keys (FxHash-style multiply-rotate).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    #[inline(always)]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline(always)]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

const FAST_SLOTS: usize = 4096;

/// One entry of the jump cache: a RIP and the translated code for it.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct JmpEntry {
    pub(crate) rip: u64,
    pub(crate) code: u64,
    /// Valid only while this equals `CodeCache::jmp_gen`.
    pub(crate) gen: u64,
    /// The decoded block `code` runs for.
    pub(crate) block: u64,
}

/// Entries per privilege level in the jump cache.
pub(crate) const JMP_SLOTS: usize = 4096;

const NO_JMP: JmpEntry = JmpEntry {
    rip: u64::MAX,
    code: 0,
    gen: 0,
    block: 0,
};

/// The jump-cache slot of `rip`: the page picks one of 64 groups (so
/// INVLPG clears one group), the offset a slot in it.
#[inline(always)]
pub(crate) fn jmp_slot(rip: u64) -> usize {
    ((((rip >> 12) & 63) << 6) | (((rip >> 2) ^ (rip >> 8)) & 63)) as usize
}

/// Decoded blocks by (physical address, RIP, bitness).
pub(crate) struct CodeCache {
    /// Translated code by RIP, for supervisor then user mode, valid for the
    /// current translations: what translated code looks up to enter the
    /// next block without the run loop. Cleared with the TLB and whenever
    /// blocks leave the cache.
    pub(crate) jmp: Box<[[JmpEntry; JMP_SLOTS]; 2]>,
    /// The generation of valid jump-cache entries (clearing the cache
    /// starts a new one).
    pub(crate) jmp_gen: u64,
    map: FastMap<Key, Arc<Block>>,
    /// Direct-mapped front of `map`.
    fast: Vec<Option<(Key, Arc<Block>)>>,
    pages: FastMap<u64, Vec<Key>>,
    /// Which bytes of each page the cached blocks were decoded from (one bit
    /// a byte): a write next to code, not over it, keeps the blocks.
    code_bytes: FastMap<u64, Box<[u64; 64]>>,
    /// Blocks dropped from the cache while one may still be executing; freed
    /// between blocks (so the loop can run a block without owning a
    /// reference count).
    graveyard: Vec<Arc<Block>>,
    /// Translations by physical page: they outlive the blocks (a block
    /// decoded again from the same bytes takes its translation at once) and
    /// go when the page is written or the translator starts afresh.
    translations: FastMap<u64, Vec<Translation>>,
    /// Single instructions that cross a page boundary, by the key of their
    /// first byte; each is listed in `pages` under both of its pages and
    /// valid while the second page's mapping is the one it was decoded
    /// from.
    straddle: FastMap<Key, Arc<Block>>,
    /// Blocks that took a translation made for another (statistics).
    pub(crate) adopted: u64,
}

/// A request one vCPU leaves for another about its code cache.
#[derive(Debug, Clone, Copy)]
enum CodeMsg {
    /// The page was written: drop the blocks decoded from it.
    Drop(u64),
    /// The page now holds code: stop writing it through the TLB.
    Protect(u64),
}

/// Code-cache state the vCPUs of one machine share: which RAM pages hold
/// code some vCPU has decoded, and each vCPU's queue of requests from the
/// others (cross-modifying code, SDM vol. 3 §8.1.3: another processor sees
/// the change at its next block boundary).
pub struct SharedCode {
    bits: Vec<AtomicU64>,
    queues: Vec<Mutex<Vec<CodeMsg>>>,
    pending: Vec<AtomicBool>,
}

impl SharedCode {
    /// State for `vcpus` vCPUs over `ram_size` bytes of RAM.
    pub fn new(ram_size: u64, vcpus: usize) -> Arc<Self> {
        let words = (ram_size / 4096).div_ceil(64) as usize + 1;
        Arc::new(SharedCode {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            queues: (0..vcpus.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            pending: (0..vcpus.max(1)).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// Number of vCPUs sharing this state.
    pub fn vcpus(&self) -> usize {
        self.queues.len()
    }

    #[inline(always)]
    pub(crate) fn is_code_page(&self, page: u64) -> bool {
        let n = (page >> 12) as usize;
        self.bits
            .get(n / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (n % 64)) != 0)
    }

    /// Marks `page` as holding code; true if it did not before.
    fn mark(&self, page: u64) -> bool {
        let n = (page >> 12) as usize;
        match self.bits.get(n / 64) {
            Some(w) => w.fetch_or(1 << (n % 64), Ordering::SeqCst) & (1 << (n % 64)) == 0,
            None => false,
        }
    }

    fn unmark(&self, page: u64) {
        let n = (page >> 12) as usize;
        if let Some(w) = self.bits.get(n / 64) {
            w.fetch_and(!(1 << (n % 64)), Ordering::SeqCst);
        }
    }

    fn post_others(&self, me: usize, msg: CodeMsg) {
        for (i, q) in self.queues.iter().enumerate() {
            if i != me {
                crate::bus::lock(q).push(msg);
                self.pending[i].store(true, Ordering::Release);
            }
        }
    }

    /// A device wrote guest RAM at `phys..phys + len` (DMA): every vCPU
    /// drops the code it decoded from those pages at its next block
    /// boundary.
    pub fn note_device_write(&self, phys: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = phys & !0xfff;
        let last = phys.saturating_add(len - 1) & !0xfff;
        let mut page = first;
        loop {
            if self.is_code_page(page) {
                self.unmark(page);
                self.post_others(usize::MAX, CodeMsg::Drop(page));
            }
            if page >= last {
                break;
            }
            page += 0x1000;
        }
    }

    /// Address of vCPU `me`'s "messages waiting" flag (an `AtomicBool`).
    pub(crate) fn pending_flag(&self, me: usize) -> usize {
        &self.pending[me] as *const AtomicBool as usize
    }

    #[inline(always)]
    fn has_pending(&self, me: usize) -> bool {
        self.pending[me].load(Ordering::Relaxed)
    }

    fn take(&self, me: usize) -> Vec<CodeMsg> {
        self.pending[me].store(false, Ordering::Release);
        std::mem::take(&mut *crate::bus::lock(&self.queues[me]))
    }
}

impl CodeCache {
    pub(crate) fn new() -> Self {
        CodeCache {
            jmp: Box::new([[NO_JMP; JMP_SLOTS]; 2]),
            jmp_gen: 1,
            map: FastMap::default(),
            fast: vec![None; FAST_SLOTS],
            pages: FastMap::default(),
            code_bytes: FastMap::default(),
            graveyard: Vec::new(),
            translations: FastMap::default(),
            straddle: FastMap::default(),
            adopted: 0,
        }
    }

    /// Gives `b` the translation made for another block decoded from its
    /// bytes, if there is one; true if it did.
    fn adopt(&mut self, b: &Block, smp: bool) -> bool {
        match self.translation(b.phys, b.jit_bits, &b.insns, smp) {
            Some(t) => {
                b.adopt(&t);
                self.adopted += 1;
                true
            }
            None => false,
        }
    }

    /// The translation made for the block at `phys` whose instructions
    /// are `insns`, if any.
    fn translation(&self, phys: u64, bits: u32, insns: &[Insn], smp: bool) -> Option<Translation> {
        let t = self
            .translations
            .get(&(phys & !0xfff))?
            .iter()
            .find(|t| t.phys == phys && t.bits == bits)?;
        (t.len == insns.len() && t.native == super::jit::native_mask(insns, smp, bits))
            .then_some(*t)
    }

    fn add_translation(&mut self, t: Translation) {
        let v = self.translations.entry(t.phys & !0xfff).or_default();
        v.retain(|o| o.phys != t.phys || o.bits != t.bits);
        v.push(t);
    }

    /// Records that a cached block was decoded from `len` bytes at `phys`
    /// (within one page).
    fn note_code_bytes(&mut self, phys: u64, len: u64) {
        let bits = self
            .code_bytes
            .entry(phys & !0xfff)
            .or_insert_with(|| Box::new([0; 64]));
        let start = (phys & 0xfff) as usize;
        let end = (start + len as usize).min(0x1000);
        for b in start..end {
            bits[b / 64] |= 1 << (b % 64);
        }
    }

    /// True if any of `len` bytes at `phys` (within one page) holds code a
    /// cached block was decoded from; true when unknown.
    pub(crate) fn overlaps_code(&self, phys: u64, len: u64) -> bool {
        let Some(bits) = self.code_bytes.get(&(phys & !0xfff)) else {
            return true;
        };
        let start = (phys & 0xfff) as usize;
        let end = (start + len.max(1) as usize).min(0x1000);
        (start..end).any(|b| bits[b / 64] & (1 << (b % 64)) != 0)
    }

    #[inline(always)]
    fn fast_slot(key: &Key) -> usize {
        ((key.0 ^ (key.1 << 7)) as usize ^ (key.0 >> 12) as usize) & (FAST_SLOTS - 1)
    }

    /// Forgets every jump-cache entry.
    pub(crate) fn jmp_clear(&mut self) {
        self.jmp_gen += 1;
    }

    /// Forgets the jump-cache entries that may be in linear page `lin`.
    pub(crate) fn jmp_flush_page(&mut self, lin: u64) {
        let g = jmp_slot(lin & !0xfff) & !63;
        for t in self.jmp.iter_mut() {
            t[g..g + 64].fill(NO_JMP);
        }
    }

    /// Forgets every block and translation (the code in memory may have
    /// changed behind the CPU's back).
    pub(crate) fn clear(&mut self) {
        self.evict();
        self.translations.clear();
    }

    /// Drops every block, keeping the translations (to make room).
    fn evict(&mut self) {
        self.jmp_clear();
        self.fast.fill(None);
        for (_, b) in self.map.drain().chain(self.straddle.drain()) {
            b.dead.set(true);
            self.graveyard.push(b);
        }
        self.pages.clear();
        self.code_bytes.clear();
    }

    /// Drops every block decoded from `page`, and their translations.
    pub(crate) fn invalidate_page(&mut self, page: u64) {
        self.code_bytes.remove(&page);
        self.translations.remove(&page);
        if let Some(keys) = self.pages.remove(&page) {
            self.jmp_clear();
            for k in keys {
                for b in [self.map.remove(&k), self.straddle.remove(&k)]
                    .into_iter()
                    .flatten()
                {
                    b.dead.set(true);
                    self.graveyard.push(b);
                }
                let s = Self::fast_slot(&k);
                if self.fast[s].as_ref().is_some_and(|(fk, _)| *fk == k) {
                    self.fast[s] = None;
                }
            }
        }
    }
}

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuExit {
    /// The instruction budget ran out.
    Budget,
    /// HLT with nothing to do.
    Halted,
    /// Triple fault: the machine must reset.
    Shutdown,
    /// [`Cpu::request_exit`] was called.
    Requested,
}

fn mem_amask(ins: &Instruction, bitness: u32) -> u64 {
    let reg = if ins.memory_base() != Register::None {
        ins.memory_base()
    } else {
        ins.memory_index()
    };
    let size = if reg != Register::None {
        match reg {
            Register::RIP => 8,
            Register::EIP => 4,
            r => r.size(),
        }
    } else {
        match ins.memory_displ_size() {
            2 => 2,
            4 if bitness != 64 => 4,
            8 => 8,
            _ => (bitness / 8) as usize,
        }
    };
    match size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn addr_mask(ins: &Instruction, bitness: u32) -> u64 {
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Memory => return mem_amask(ins, bitness),
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 0xffff,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => {
                return 0xffff_ffff
            }
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return u64::MAX,
            _ => {}
        }
    }
    // No memory operand (LOOP, JCXZ use the address size too): iced reports it
    // through the counter register for those, handled by their handlers.
    match bitness {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn op_size(ins: &Instruction) -> u8 {
    for i in 0..ins.op_count().min(2) {
        match ins.op_kind(i) {
            OpKind::Register => return ins.op_register(i).size() as u8,
            OpKind::Memory => {
                let s = ins.memory_size().size();
                if s > 0 {
                    return s.min(255) as u8;
                }
            }
            _ => {}
        }
    }
    0
}

fn lookup(ins: &Instruction) -> Handler {
    if ins.code() == iced_x86::Code::INVALID {
        return invalid;
    }
    super::ops_basic::lookup(ins)
        .or_else(|| super::ops_ext::lookup(ins))
        .or_else(|| super::system::lookup(ins))
        .or_else(|| super::x87::lookup(ins))
        .or_else(|| super::sse::lookup(ins))
        .unwrap_or(unimplemented)
}

fn invalid(_cpu: &mut Cpu, _d: &Insn) -> R {
    Err(Exc::UD)
}

fn unimplemented(cpu: &mut Cpu, d: &Insn) -> R {
    Err(cpu.unimplemented(&d.ins))
}

/// The first immediate or near-branch operand: (index, value).
fn first_imm(ins: &Instruction) -> Option<(u8, u64)> {
    (0..ins.op_count()).find_map(|i| match ins.op_kind(i) {
        k if super::operand::is_immediate(k) => Some((i as u8, ins.immediate(i))),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            Some((i as u8, ins.near_branch_target()))
        }
        _ => None,
    })
}

fn make_insn(ins: Instruction, bitness: u32, smp: bool) -> Insn {
    let handler = lookup(&ins);
    let imm = first_imm(&ins);
    Insn {
        handler: if smp && super::atomic::is_locked(&ins) {
            super::atomic::locked
        } else {
            handler
        },
        inner: handler,
        osize: op_size(&ins),
        amask: addr_mask(&ins, bitness),
        ea_base: match ins.memory_base() {
            Register::RIP | Register::EIP => Register::None,
            r => r,
        },
        ea_index: ins.memory_index(),
        ea_shift: ins.memory_index_scale().trailing_zeros() as u8,
        cc: (ins.condition_code() as u8).wrapping_sub(1) & 0xf,
        imm_op: imm.map_or(0xff, |(i, _)| i),
        imm: imm.map_or(0, |(_, v)| v),
        ins,
    }
}

impl Cpu {
    /// Mask applied to the instruction pointer in the current mode.
    #[inline(always)]
    pub fn ip_mask(&self) -> u64 {
        match self.bitness() {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        }
    }

    /// Takes NMI, INIT and SIPI from the local APIC (SDM vol. 3 §8.4.1,
    /// §10.6.1).
    #[cold]
    fn take_cpu_events(&mut self) {
        let Some(ic) = self.intc.clone() else {
            return;
        };
        while let Some(ev) = ic.take_event() {
            match ev {
                super::CpuEvent::Nmi => self.nmi_pending = true,
                super::CpuEvent::Init => {
                    self.reset();
                    self.wait_sipi = true;
                }
                super::CpuEvent::Sipi(v) => {
                    if self.wait_sipi {
                        self.wait_sipi = false;
                        self.halted = false;
                        self.seg[super::CS].selector = (v as u16) << 8;
                        self.seg[super::CS].base = (v as u64) << 12;
                        self.rip = 0;
                    }
                }
            }
        }
    }

    /// True when something would take the CPU out of HLT or wait-for-SIPI
    /// (for the thread that waits for it).
    pub fn can_wake(&self) -> bool {
        let pending = match &self.intc {
            Some(ic) => ic.pending(),
            None => 0,
        };
        pending & super::PENDING_EVENT != 0
            || (!self.wait_sipi
                && (self.nmi_pending && !self.nmi_blocked
                    || pending & super::PENDING_INTR != 0 && self.flags.sys(flags::IF)))
    }

    /// Applies what other vCPUs asked of this one's code cache and TLB.
    #[cold]
    fn process_code_messages(&mut self) {
        for m in self.code.take(self.index) {
            match m {
                CodeMsg::Drop(page) => self.cache.invalidate_page(page),
                CodeMsg::Protect(page) => self.tlb.flush_phys_writes(page),
            }
        }
    }

    /// A write hit a page holding code: drop the blocks decoded from it here
    /// and in every other vCPU.
    pub(crate) fn invalidate_code_page(&mut self, page: u64) {
        self.cache.invalidate_page(page);
        self.code.unmark(page);
        self.code.post_others(self.index, CodeMsg::Drop(page));
    }

    /// Finds or decodes the block at CS:RIP.
    /// The returned block stays valid until the next call (dropped blocks
    /// wait in the graveyard until then).
    fn block(&mut self) -> R<*const Block> {
        self.cache.graveyard.clear();
        let bitness = self.bitness();
        let lin = self.lin(super::CS, self.rip);
        if bitness == 64 && ((lin as i64) << 16 >> 16) as u64 != lin {
            return Err(Exc::gp(0));
        }
        let user = self.user();
        let phys = self.fetch_phys(lin, user)?;
        let key = (phys, self.rip, bitness);
        let slot = CodeCache::fast_slot(&key);
        if let Some((k, b)) = &self.cache.fast[slot] {
            if *k == key {
                return Ok(Arc::as_ptr(b));
            }
        }
        if let Some(b) = self.cache.map.get(&key) {
            let p = Arc::as_ptr(b);
            self.cache.fast[slot] = Some((key, b.clone()));
            return Ok(p);
        }
        // The next page, where an instruction crossing out of this one
        // continues.
        let lin2 = self.wrap_lin((lin & !0xfff).wrapping_add(0x1000));
        if let Some(b) = self.cache.straddle.get(&key) {
            let (p, phys2) = (Arc::as_ptr(b), b.phys2);
            // The instruction needs the next page: a fault there is the
            // fault decoding it would raise.
            if self.fetch_phys(lin2, user)? & !0xfff == phys2 {
                return Ok(p);
            }
        }
        let page = phys & !0xfff;
        let avail = 0x1000 - (phys & 0xfff);
        let in_ram = !self.space.mmio.overlaps(page, 0x1000);
        let host = if in_ram {
            self.space.ram.ptr(phys, avail)
        } else {
            None
        };
        let mut insns = Vec::new();
        let mut nbytes = 0u64;
        if let Some(host) = host {
            // SAFETY: `ptr` checked that `avail` bytes from `phys` lie in RAM.
            let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, avail as usize) };
            let mut dec = Decoder::with_ip(bitness, bytes, self.rip, DecoderOptions::NONE);
            let mut ins = Instruction::default();
            while dec.can_decode() && insns.len() < MAX_BLOCK {
                dec.decode_out(&mut ins);
                if dec.last_error() == iced_x86::DecoderError::NoMoreBytes {
                    break;
                }
                let ends = !matches!(ins.flow_control(), iced_x86::FlowControl::Next);
                nbytes += ins.len() as u64;
                insns.push(make_insn(ins, bitness, self.smp));
                if ends {
                    break;
                }
            }
        }
        if !insns.is_empty() {
            self.cache.note_code_bytes(phys, nbytes);
        }
        if insns.is_empty() {
            // Crosses a page boundary, or runs from a device: decode once,
            // uncached.
            let mut buf = [0u8; 15];
            let mut ins = Instruction::default();
            for i in 0..15usize {
                let a = self.wrap_lin(lin.wrapping_add(i as u64));
                buf[i] = self.read_lin(a, 1, Access::Exec, user)? as u8;
                let mut dec = Decoder::with_ip(bitness, &buf[..=i], self.rip, DecoderOptions::NONE);
                dec.decode_out(&mut ins);
                if dec.last_error() != iced_x86::DecoderError::NoMoreBytes {
                    break;
                }
            }
            let mut b = Block::new(vec![make_insn(ins, bitness, self.smp)], phys, false, 0);
            let len = ins.len() as u64;
            if host.is_some() && len > avail {
                // From RAM into the next page: cached (as a lone
                // instruction, never chained or translated) if that page is
                // RAM too.
                let phys2 = self.fetch_phys(lin2, user)?;
                let page2 = phys2 & !0xfff;
                if !self.space.mmio.overlaps(page2, 0x1000)
                    && self.space.ram.ptr(page2, 0x1000).is_some()
                {
                    b.phys2 = page2;
                    let b = Arc::new(b);
                    self.cache.note_code_bytes(phys, avail);
                    self.cache.note_code_bytes(page2, len - avail);
                    for pg in [page, page2] {
                        if self.code.mark(pg) {
                            self.tlb.flush_phys_writes(pg);
                            self.code.post_others(self.index, CodeMsg::Protect(pg));
                        }
                        self.cache.pages.entry(pg).or_default().push(key);
                    }
                    let p = Arc::as_ptr(&b);
                    self.cache.straddle.insert(key, b);
                    return Ok(p);
                }
            }
            let b = Arc::new(b);
            let p = Arc::as_ptr(&b);
            self.cache.graveyard.push(b);
            return Ok(p);
        }
        let jit_bits = if bitness == 16 { 0 } else { bitness };
        let block = Arc::new(Block::new(insns, phys, true, jit_bits));
        if self.code.mark(page) {
            self.tlb.flush_phys_writes(page);
            self.code.post_others(self.index, CodeMsg::Protect(page));
        }
        if self.cache.map.len() > 1 << 16 || self.jit.as_ref().is_some_and(|j| j.full()) {
            // Pages stay marked (other vCPUs may hold their code); a write
            // to one just takes the slow path once.
            self.cache.evict();
            if let Some(j) = self.jit.as_mut().filter(|j| j.full()) {
                self.cache.translations.clear();
                // SAFETY: every translated block just left the cache; the
                // graveyard keeps them only until the next call, and no
                // translated code is running (we are between blocks).
                if let Err(e) = unsafe { j.reset() } {
                    tracing::warn!("JIT: {e}; interpreting from now on");
                    self.jit_hot = 0;
                }
            }
        }
        if jit_bits != 0 && self.jit_hot != 0 {
            self.cache.adopt(&block, self.smp);
        }
        let p = Arc::as_ptr(&block);
        self.cache.map.insert(key, block);
        self.cache.pages.entry(page).or_default().push(key);
        Ok(p)
    }

    /// Runs until `budget` instructions have retired, the CPU halts, a triple
    /// fault, or an exit request.
    pub fn run(&mut self, budget: u64) -> CpuExit {
        let limit = self.icount.saturating_add(budget);
        self.jit_chain_limit = limit.saturating_sub(MAX_BLOCK as u64);
        self.jit_poll_setup();
        // The block that last ran to its end, and the linear address it
        // started at (see the chaining below).
        let mut prev: *const Block = std::ptr::null();
        let mut prev_lin = 0u64;
        loop {
            if self.shutdown {
                return CpuExit::Shutdown;
            }
            if self.exit_request.load(Ordering::Relaxed) {
                self.exit_request.store(false, Ordering::Relaxed);
                return CpuExit::Requested;
            }
            if self.icount >= limit {
                return CpuExit::Budget;
            }
            if self.code.has_pending(self.index) {
                self.process_code_messages();
                prev = std::ptr::null();
            }
            if self.jit_worker.as_ref().is_some_and(|w| w.has_results()) {
                self.install_translations();
                prev = std::ptr::null();
            }
            let pending = match &self.irq_state {
                Some(s) => s.pending(),
                None => match &self.intc {
                    Some(ic) => ic.pending(),
                    None => 0,
                },
            };
            if pending & super::PENDING_EVENT != 0 {
                self.take_cpu_events();
                prev = std::ptr::null();
            }
            if self.wait_sipi {
                return CpuExit::Halted;
            }
            if self.nmi_pending && !self.nmi_blocked && !self.irq_inhibit {
                self.nmi_pending = false;
                self.nmi_blocked = true;
                self.external_interrupt(super::vec::NMI);
                self.stop_block = false;
                prev = std::ptr::null();
                continue;
            }
            if self.irq_inhibit {
                self.irq_inhibit = false;
            } else if pending & super::PENDING_INTR != 0 && self.flags.sys(flags::IF) {
                if let Some(v) = self.intc.as_ref().and_then(|ic| ic.acknowledge()) {
                    self.halted = false;
                    self.external_interrupt(v);
                    self.stop_block = false;
                    prev = std::ptr::null();
                    continue;
                }
            }
            if self.halted {
                return CpuExit::Halted;
            }
            // A block that ended with a plain jump or fall-through within
            // its page goes straight to the successor it saw there before
            // (block chaining): same page, same translation, no lookup.
            let lin = self.lin(super::CS, self.rip);
            let chained = if prev.is_null() || (lin ^ prev_lin) & !0xfff != 0 {
                None
            } else {
                // SAFETY: `prev` is the block that just ran to its end: it is
                // still cached (no invalidation or cache clear happened, or
                // `prev` would have been reset).
                unsafe { (*prev).successor(self.rip) }
            };
            let block = match chained {
                Some(b) => b,
                None => match self.block() {
                    Ok(b) => {
                        // SAFETY: as above; `b` was just returned by `block`.
                        if !prev.is_null()
                            && (lin ^ prev_lin) & !0xfff == 0
                            && unsafe { (*b).cached && (*prev).cached }
                        {
                            // SAFETY: as above.
                            unsafe { (*prev).link(self.rip, b) };
                        }
                        b
                    }
                    Err(e) => {
                        self.raise(e);
                        self.stop_block = false;
                        prev = std::ptr::null();
                        continue;
                    }
                },
            };
            // SAFETY: the block stays alive (in the cache or its graveyard)
            // until the next call of `block`, which happens only after this
            // iteration has finished with it.
            let b = unsafe { &*block };
            self.recent_blocks[self.recent_pos % 16] = self.rip;
            self.recent_pos = self.recent_pos.wrapping_add(1);
            let room = (limit - self.icount).min(usize::MAX as u64) as usize;
            let (old_prev, old_lin) = (prev, prev_lin);
            prev = block;
            prev_lin = lin;
            let code = if self.jit_skip {
                self.jit_skip = false;
                0
            } else {
                b.code.get()
            };
            if code != 0 {
                if !old_prev.is_null() && (lin ^ old_lin) & !0xfff == 0 {
                    // Translated code may enter this block directly from
                    // the one before (same page, so same translation).
                    // SAFETY: `old_prev` ran to its end just now: still
                    // cached, as above.
                    let p = unsafe { &*old_prev };
                    if p.code.get() != 0 {
                        for (r, l) in p.link_rips.iter().zip(&p.links) {
                            if r.get() == self.rip {
                                l.set(block as usize);
                            }
                        }
                    }
                }
                let enter = match &self.jit_worker {
                    Some(w) => w.enter,
                    None => self.jit.as_ref().map(|j| j.enter),
                };
                if let Some(enter) = enter.filter(|_| room >= b.insns.len()) {
                    // SAFETY: `code` was compiled from this block's
                    // instructions, which stay alive while it runs (see
                    // above), as do the blocks it enters through its links
                    // (same page: they leave the cache together, and only
                    // between blocks); the code lives until the translator
                    // is reset, which drops every block first.
                    self.jit_tables();
                    let r = unsafe { enter(self as *mut Cpu, code, block as usize) };
                    if r & super::jit::EARLY != 0 {
                        self.stop_block = false;
                        prev = std::ptr::null();
                    } else {
                        prev = self.jit_last as *const Block;
                        // SAFETY: the last block run is alive, as above.
                        prev_lin = unsafe { (&(*prev).insns)[0].ins.ip() };
                    }
                    continue;
                }
            } else if b.jit_bits != 0 && self.jit_hot != 0 && b.code.get() == 0 {
                let h = b.hits.get().saturating_add(1);
                b.hits.set(h);
                if h == self.jit_hot {
                    self.compile_block(b);
                } else if h % 64 == 0 && b.cached {
                    // Translated since this block was decoded, from the
                    // same bytes at another RIP?
                    self.cache.adopt(b, self.smp);
                }
            }
            let ip_mask = self.ip_mask();
            let mut done = 0u64;
            for d in b.insns.iter().take(room) {
                self.rip = d.ins.next_ip() & ip_mask;
                if let Err(e) = (d.handler)(self, d) {
                    self.rip = d.ins.ip();
                    self.raise(e);
                    self.stop_block = false;
                    prev = std::ptr::null();
                    break;
                }
                done += 1;
                if self.stop_block {
                    self.stop_block = false;
                    prev = std::ptr::null();
                    break;
                }
            }
            self.icount += done;
        }
    }

    /// The block at CS:RIP if it is translated and can be entered straight
    /// from translated code: 64- or 32-bit code, the fetch translation in
    /// the TLB, the block in the direct-mapped cache. 0 otherwise (the run
    /// loop then looks it up, decoding if need be). A found 64-bit block
    /// goes into the jump cache; nothing else changes.
    pub(crate) fn jit_lookup(&mut self) -> usize {
        let bits = self.bitness();
        if bits == 16 {
            return 0;
        }
        let user = self.user();
        let lin = self.lin(super::CS, self.rip);
        let Some(phys) = self.fetch_phys_cached(lin, user) else {
            return 0;
        };
        let key = (phys, self.rip, bits);
        let (code, block) = match &self.cache.fast[CodeCache::fast_slot(&key)] {
            Some((k, b)) if *k == key => (b.code.get(), Arc::as_ptr(b) as usize),
            _ => (0, 0),
        };
        if code == 0 {
            return 0;
        }
        if bits != 64 {
            // The jump cache serves 64-bit code only (its entries do not
            // say the mode).
            return block;
        }
        self.cache.jmp[user as usize][jmp_slot(self.rip)] = JmpEntry {
            rip: self.rip,
            code: code as u64,
            gen: self.cache.jmp_gen,
            block: block as u64,
        };
        block
    }

    /// Installs the code the compiling thread sent back (between blocks).
    #[cold]
    fn install_translations(&mut self) {
        let Some(w) = self.jit_worker.as_mut() else {
            return;
        };
        let mut full = false;
        let epoch = w.epoch;
        for d in w.results() {
            match d {
                super::jit::worker::Done::Enter(f, e) if e == epoch => w.enter = Some(f),
                super::jit::worker::Done::Code {
                    block,
                    result,
                    epoch: e,
                } if e == epoch && !block.dead.get() => match result {
                    Ok((code, links)) => {
                        let t = Translation {
                            phys: block.phys,
                            bits: block.jit_bits,
                            code,
                            len: block.insns.len(),
                            native: super::jit::native_mask(&block.insns, self.smp, block.jit_bits),
                            links,
                        };
                        block.adopt(&t);
                        self.cache.add_translation(t);
                    }
                    Err(err) => {
                        tracing::warn!("JIT: block at {:#x} not translated: {err}", block.base);
                        block.hits.set(u32::MAX);
                    }
                },
                super::jit::worker::Done::Full(e) if e == epoch => full = true,
                _ => {}
            }
        }
        if full {
            // Every block and translation goes before the code memory does.
            self.cache.clear();
            w.reset();
        }
    }

    /// Compiles a hot block (it runs translated from its next run), on the
    /// compiling thread unless every block is to be compiled at its first
    /// run (then here, at once).
    #[cold]
    fn compile_block(&mut self, b: &Block) {
        if self.cache.adopt(b, self.smp) {
            return;
        }
        if self.jit_hot > 1 {
            if self.jit_worker.is_none() {
                self.jit_worker =
                    super::jit::worker::Worker::start(self.jit_max_code).map(Box::new);
            }
            if let Some(w) = &self.jit_worker {
                let p = b as *const Block;
                // SAFETY: `b` is a cached block, owned by an `Arc` in the
                // cache (or its graveyard) at this moment: one more strong
                // reference keeps it alive for the compiling thread.
                let arc = unsafe {
                    Arc::increment_strong_count(p);
                    Arc::from_raw(p)
                };
                w.request(arc, self.smp, b.jit_bits);
                return;
            }
        }
        if self.jit.is_none() {
            match super::jit::Jit::new() {
                Ok(j) => self.jit = Some(Box::new(j)),
                Err(e) => {
                    tracing::warn!("JIT unavailable ({e}): interpreting");
                    self.jit_hot = 0;
                    return;
                }
            }
        }
        let smp = self.smp;
        if let Some(j) = self.jit.as_mut() {
            // A panic in the code generator must not take the VM down: the
            // block just stays interpreted.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                j.compile(&b.insns, smp, b.jit_bits)
            }))
            .unwrap_or_else(|_| Err("code generator panicked".into()));
            match r {
                Ok((code, links)) => {
                    let t = Translation {
                        phys: b.phys,
                        bits: b.jit_bits,
                        code,
                        len: b.insns.len(),
                        native: super::jit::native_mask(&b.insns, smp, b.jit_bits),
                        links,
                    };
                    b.adopt(&t);
                    self.cache.add_translation(t);
                }
                Err(e) => {
                    tracing::warn!("JIT: block at {:#x} not translated: {e}", self.rip);
                    b.hits.set(u32::MAX);
                }
            }
        }
    }

    /// Executes exactly one instruction (for tests and single-stepping).
    pub fn step(&mut self) -> CpuExit {
        self.run(1)
    }
}
