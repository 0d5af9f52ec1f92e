//! The KVM accelerator: runs the guest on the host CPU through `/dev/kvm`.
//!
//! [`probe`] says whether KVM can run an unmodified PC guest on this host and,
//! if not, why (in one line the user can act on). [`KvmVcpu`] owns a VM with
//! one vCPU over an [`AddressSpace`]: guest RAM is registered as KVM memory
//! slots, and port-I/O and MMIO exits are dispatched to the address space's
//! buses inside [`KvmVcpu::run`].
//!
//! The machine keeps its interrupt controller in userspace (no in-kernel
//! irqchip), so HLT exits to userspace and interrupts are injected with
//! `KVM_INTERRUPT` when the guest can take one (Documentation/virt/kvm/api.rst,
//! "KVM_INTERRUPT" and `request_interrupt_window`).
//!
//! Stopping a running vCPU: a [`KvmKicker`], or the per-run timer that ends a
//! time slice, sends [`kick_signal`] to the vCPU thread. The signal handler
//! sets `kvm_run.immediate_exit` of the vCPU running on that thread, so
//! `KVM_RUN` returns `EINTR` whether the signal lands while the guest runs or
//! just before the next entry (api.rst, "immediate_exit").
//!
//! PVM (the "pagetable-based virtual machine", a paravirtual KVM backend that
//! works without VMX/SVM) exposes the same `/dev/kvm` API but only runs guests
//! built for it: real-mode code runs, unmodified protected-mode and 64-bit
//! guests hang. [`probe`] detects it and reports
//! [`KvmUnavailable::Paravirtual`] so the machine picks the software CPU.

use crate::bus::AddressSpace;
use crate::cpu::{attr, Cpu, DescriptorTable, InterruptController, Segment};
use kvm_bindings::{kvm_dtable, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The KVM device node.
const KVM_DEVICE: &str = "/dev/kvm";
/// The only stable KVM API version (api.rst §4.1, KVM_GET_API_VERSION).
const KVM_API_VERSION: i32 = 12;
/// Where loaded kernel modules (and built-in ones with parameters) appear.
const SYS_MODULE: &str = "/sys/module";
/// CPU feature flags of the host.
const CPUINFO: &str = "/proc/cpuinfo";
/// Hypervisor CPUID leaf in which upstream PVM reports its signature.
const PVM_CPUID_VENDOR_LEAF: u32 = 0x4000_0002;
/// "PVM\0" as the little-endian EBX of [`PVM_CPUID_VENDOR_LEAF`].
const PVM_SIGNATURE: u32 = 0x004d_5650;
/// `_IOW(KVMIO, 0x86, struct kvm_interrupt)`: queue an external interrupt
/// (only valid without an in-kernel irqchip).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
/// Guest-physical page KVM/VMX uses for its real-mode identity page table
/// (KVM_SET_IDENTITY_MAP_ADDR), just below the BIOS area at the top of 4 GiB.
const IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// Guest-physical base of the three pages KVM/VMX uses for its real-mode TSS
/// (KVM_SET_TSS_ADDR); follows [`IDENTITY_MAP_ADDR`].
const TSS_ADDR: u64 = 0xfeff_d000;
/// Guest page size used to carve RAM slots around MMIO.
const PAGE: u64 = 4096;

/// Why KVM cannot be used; each message is one line the user can act on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KvmUnavailable {
    /// There is no `/dev/kvm`.
    #[error(
        "/dev/kvm does not exist: this host offers no KVM (no virtualization extensions, or the kvm module is not loaded)"
    )]
    NoDevice,
    /// `/dev/kvm` exists but this user may not open it.
    #[error(
        "/dev/kvm: permission denied; add your user to the 'kvm' group (sudo usermod -aG kvm $USER) and log in again"
    )]
    PermissionDenied,
    /// `/dev/kvm` is a paravirtual backend (PVM) that cannot run an
    /// unmodified PC guest; the string says how it was recognised.
    #[error(
        "/dev/kvm is PVM (paravirtual KVM), which cannot run unmodified protected-mode guests ({0})"
    )]
    Paravirtual(String),
    /// Anything else (old kernel, missing capability, failed ioctl...).
    #[error("KVM is unusable: {0}")]
    Other(String),
}

/// Errors while running a vCPU that was created successfully.
#[derive(Debug, Error)]
pub enum KvmError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The time-slice timer could not be set up.
    #[error("Cannot arm the KVM time-slice timer: {0}")]
    Timer(std::io::Error),
}

fn ioctl_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

fn other(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmUnavailable {
    move |e| {
        KvmUnavailable::Other(format!(
            "{what} failed: {}",
            std::io::Error::from_raw_os_error(e.errno())
        ))
    }
}

/// Which kernel backend implements `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmBackend {
    /// Intel VT-x (`kvm_intel`).
    Vmx,
    /// AMD-V (`kvm_amd`).
    Svm,
    /// PVM, the paravirtual backend (`kvm_pvm`): cannot run unmodified guests.
    Pvm,
    /// Could not tell (no vendor module visible in /sys/module).
    Unknown,
}

impl std::fmt::Display for KvmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmBackend::Vmx => "Intel VT-x",
            KvmBackend::Svm => "AMD-V",
            KvmBackend::Pvm => "PVM (paravirtual)",
            KvmBackend::Unknown => "unknown backend",
        })
    }
}

/// What [`probe`] found out about the host's KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmInfo {
    /// KVM_GET_API_VERSION (always 12 when usable).
    pub api_version: i32,
    /// The backend behind `/dev/kvm`.
    pub backend: KvmBackend,
    /// Recommended maximum number of vCPUs per VM.
    pub max_vcpus: usize,
    /// Number of memory slots per VM.
    pub memslots: usize,
    /// KVM_CAP_SET_TSS_ADDR: VMX needs a TSS (and identity page table) area
    /// to run real mode on CPUs without unrestricted guest.
    pub set_tss_addr: bool,
}

/// Checks whether this host's KVM can run an unmodified PC guest.
///
/// Checks that `/dev/kvm` exists and opens read-write, the API version, the
/// capabilities [`KvmVcpu`] needs (user memory slots, immediate exit, CPUID
/// reporting), and that the backend is hardware virtualization rather than
/// PVM. Cheap enough to call at start-up to choose the accelerator.
pub fn probe() -> Result<KvmInfo, KvmUnavailable> {
    let (_kvm, info, pvm) = open_checked()?;
    match pvm {
        Some(evidence) => Err(KvmUnavailable::Paravirtual(evidence)),
        None => Ok(info),
    }
}

/// Opens `/dev/kvm`, checks the API and capabilities, and identifies the
/// backend; the third value is the PVM evidence if the backend is PVM.
fn open_checked() -> Result<(Kvm, KvmInfo, Option<String>), KvmUnavailable> {
    if !Path::new(KVM_DEVICE).exists() {
        return Err(KvmUnavailable::NoDevice);
    }
    let kvm = Kvm::new().map_err(|e| classify_open_error(e.errno()))?;
    let api_version = kvm.get_api_version();
    if api_version != KVM_API_VERSION {
        return Err(KvmUnavailable::Other(format!(
            "/dev/kvm speaks API version {api_version}, expected {KVM_API_VERSION}"
        )));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT (Linux 4.11+)"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmUnavailable::Other(format!("the kernel lacks {name}")));
        }
    }
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(other("KVM_GET_SUPPORTED_CPUID"))?;
    let pvm_signature = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == PVM_CPUID_VENDOR_LEAF && e.ebx == PVM_SIGNATURE);
    let flags = std::fs::read_to_string(CPUINFO).ok();
    let (backend, evidence) =
        detect_backend(Path::new(SYS_MODULE), flags.as_deref(), pvm_signature);
    let info = KvmInfo {
        api_version,
        backend,
        max_vcpus: kvm.get_nr_vcpus(),
        memslots: kvm.get_nr_memslots(),
        set_tss_addr: kvm.check_extension(Cap::SetTssAddr),
    };
    Ok((kvm, info, evidence))
}

/// Maps the errno of opening `/dev/kvm` to the reason shown to the user.
fn classify_open_error(errno: i32) -> KvmUnavailable {
    match errno {
        libc::EACCES | libc::EPERM => KvmUnavailable::PermissionDenied,
        libc::ENOENT => KvmUnavailable::NoDevice,
        libc::ENXIO | libc::ENODEV => KvmUnavailable::Other(
            "/dev/kvm has no driver behind it (is kvm_intel or kvm_amd loaded?)".into(),
        ),
        e => KvmUnavailable::Other(format!(
            "cannot open /dev/kvm: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

/// True if the `flags` line of `/proc/cpuinfo` text lists `flag`.
fn cpu_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .is_some_and(|(_, f)| f.split_whitespace().any(|w| w == flag))
}

/// Identifies the backend behind `/dev/kvm`; the second value is set (with
/// the evidence) when it is PVM or otherwise cannot be hardware KVM.
///
/// PVM registers as KVM's x86 vendor module `kvm_pvm` instead of `kvm_intel`
/// or `kvm_amd` (only one vendor module can be active), and is meant for
/// hosts without VMX/SVM (cloud VMs without nested virtualization). Upstream
/// PVM also reports the "PVM" signature in the supported CPUID leaf
/// 0x40000002; builds without it are still recognised by the module. A
/// built-in module with parameters appears in /sys/module even if its init
/// failed, so a hardware module counts only if the CPU has its feature.
fn detect_backend(
    sys_module: &Path,
    cpuinfo: Option<&str>,
    pvm_signature: bool,
) -> (KvmBackend, Option<String>) {
    if pvm_signature {
        return (
            KvmBackend::Pvm,
            Some("KVM reports the PVM CPUID signature".into()),
        );
    }
    let loaded = |m: &str| sys_module.join(m).exists();
    let (intel, amd, pvm) = (loaded("kvm_intel"), loaded("kvm_amd"), loaded("kvm_pvm"));
    // Without /proc/cpuinfo, trust the modules.
    let vmx = cpuinfo.is_none_or(|c| cpu_has_flag(c, "vmx"));
    let svm = cpuinfo.is_none_or(|c| cpu_has_flag(c, "svm"));
    if intel && vmx {
        return (KvmBackend::Vmx, None);
    }
    if amd && svm {
        return (KvmBackend::Svm, None);
    }
    if pvm {
        let why = if intel || amd {
            "kvm_pvm is loaded and the host CPU has no VMX/SVM"
        } else {
            "kvm_pvm is loaded, kvm_intel and kvm_amd are not"
        };
        return (KvmBackend::Pvm, Some(why.into()));
    }
    if !vmx && !svm {
        return (
            KvmBackend::Unknown,
            Some("the host CPU has neither VMX nor SVM, so /dev/kvm is not hardware KVM".into()),
        );
    }
    (KvmBackend::Unknown, None)
}

/// Registers of a vCPU as KVM_GET/SET_REGS and KVM_GET/SET_SREGS see them,
/// in the soft CPU's conventions (register and segment order, [`Segment`]
/// attributes in VMX access-rights layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmState {
    /// RAX..R15 in encoding order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS (bit 1 is forced on when loaded).
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS (indices [`crate::cpu::ES`]...).
    pub seg: [Segment; 6],
    /// LDTR (unusable when not present).
    pub ldtr: Segment,
    /// TR; a not-present TR is loaded as a busy 32-bit TSS, which VMX
    /// requires even in real mode (SDM vol. 3 §26.3.1.2).
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (TPR).
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
}

impl KvmState {
    /// The state after RESET (SDM vol. 3 §9.1.1, table 9-1): real mode,
    /// CS:IP = F000:FFF0 with CS base FFFF0000.
    pub fn reset() -> Self {
        let mut s = Self::real_mode(0xf000, 0xfff0);
        s.seg[crate::cpu::CS].base = 0xffff_0000;
        s.cr0 = crate::cpu::cr0::CD | crate::cpu::cr0::NW | crate::cpu::cr0::ET;
        s
    }

    /// Real mode at `cs:ip` with all other segments 0, caches enabled,
    /// interrupts disabled and a 1 KiB IVT at 0.
    pub fn real_mode(cs: u16, ip: u16) -> Self {
        let mut seg = [Segment::real(0); 6];
        seg[crate::cpu::CS] = Segment::real(cs);
        KvmState {
            rip: ip as u64,
            rflags: 2,
            seg,
            ldtr: Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                attr: attr::P | 0x2,
            },
            tr: Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                attr: attr::P | 0x3,
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0x3ff,
            },
            cr0: crate::cpu::cr0::ET,
            ..Default::default()
        }
    }

    /// The architectural registers of the software CPU (to continue a guest
    /// under KVM). FPU/SSE state, debug registers and other MSRs are not
    /// included.
    pub fn from_cpu(cpu: &Cpu) -> Self {
        KvmState {
            gpr: cpu.gpr,
            rip: cpu.rip,
            rflags: cpu.flags.get(),
            seg: cpu.seg,
            ldtr: cpu.ldtr,
            tr: cpu.tr,
            gdtr: cpu.gdtr,
            idtr: cpu.idtr,
            cr0: cpu.cr0,
            cr2: cpu.cr2,
            cr3: cpu.cr3,
            cr4: cpu.cr4,
            cr8: cpu.cr8,
            efer: cpu.efer,
        }
    }
}

/// [`Segment`] (VMX access rights: type 0–3, S 4, DPL 5–6, P 7, AVL 12, L 13,
/// D/B 14, G 15) to KVM's unpacked form.
fn seg_to_kvm(s: &Segment) -> kvm_segment {
    let a = s.attr;
    let bit = |n: u16| ((a >> n) & 1) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & attr::TYPE) as u8,
        present: bit(7),
        dpl: attr::dpl(a),
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: (a & attr::P == 0) as u8,
        padding: 0,
    }
}

/// KVM's unpacked segment to [`Segment`]; an unusable segment reads as not
/// present.
fn seg_from_kvm(k: &kvm_segment) -> Segment {
    let b = |v: u8, n: u16| ((v & 1) as u16) << n;
    let present = k.present != 0 && k.unusable == 0;
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attr: (k.type_ as u16 & attr::TYPE)
            | b(k.s, 4)
            | ((k.dpl as u16 & 3) << 5)
            | b(present as u8, 7)
            | b(k.avl, 12)
            | b(k.l, 13)
            | b(k.db, 14)
            | b(k.g, 15),
    }
}

fn dtable_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

fn dtable_from_kvm(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

/// Why [`KvmVcpu::run`] returned. Port I/O and MMIO exits are handled inside
/// `run` and never returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmExit {
    /// The guest executed HLT (and no interrupt is ready for it). RIP is
    /// past the HLT; run again once an interrupt is pending.
    Halted,
    /// Triple fault: the machine should reset.
    Shutdown,
    /// The time slice ended or a [`KvmKicker`] asked for an exit; the guest
    /// can be resumed with another `run`.
    TimeSlice,
    /// KVM can accept an interrupt now; returned only when no interrupt
    /// controller was set with [`KvmVcpu::set_interrupt_controller`] (call
    /// [`KvmVcpu::inject_interrupt_if_ready`] and run again).
    InterruptWindow,
    /// KVM_EXIT_SYSTEM_EVENT (reset, shutdown or crash requested through
    /// KVM; the value is `KVM_SYSTEM_EVENT_*`).
    SystemEvent(u32),
    /// KVM_EXIT_INTERNAL_ERROR (e.g. the in-kernel emulator failed).
    InternalError {
        /// `KVM_INTERNAL_ERROR_*` sub-error.
        suberror: u32,
        /// Extra words KVM supplied.
        data: Vec<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused VM entry (invalid state).
    FailEntry {
        /// Hardware entry-failure reason (VMX exit reason, SVM exit code).
        reason: u64,
        /// Host CPU on which entry failed.
        cpu: u32,
    },
    /// Any other exit, described.
    Unexpected(String),
}

/// State shared between a [`KvmVcpu`] and its [`KvmKicker`]s.
#[derive(Default)]
struct KickShared {
    /// A kick is pending: the next (or current) `run` returns `TimeSlice`.
    kick: AtomicBool,
    /// The thread inside `run`, if any (signalled while the lock is held, so
    /// it cannot have exited).
    thread: Mutex<Option<libc::pthread_t>>,
}

/// Makes a vCPU's [`KvmVcpu::run`] return [`KvmExit::TimeSlice`] soon, from
/// any thread. A kick while the vCPU is not running makes its next `run`
/// return at once.
#[derive(Clone)]
pub struct KvmKicker {
    shared: Arc<KickShared>,
}

impl KvmKicker {
    /// Requests an exit: interrupts `KVM_RUN` with [`kick_signal`] if the
    /// vCPU is running.
    pub fn kick(&self) {
        self.shared.kick.store(true, Ordering::SeqCst);
        let thread = crate::bus::lock(&self.shared.thread);
        if let Some(t) = *thread {
            // SAFETY: `t` is the thread currently inside `run` (it clears the
            // entry under this lock before leaving `run`), so it is alive.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }
}

/// The signal used to kick vCPU threads out of `KVM_RUN` (SIGRTMIN+2). Its
/// handler is installed process-wide by [`KvmVcpu::new`]; other code must not
/// claim this signal.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU running on this thread, or null.
    /// Const-initialized without a destructor, so reading it from a signal
    /// handler involves no lazy initialization.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick_signal(_sig: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points into the kvm_run mapping of the vCPU running on
        // this thread; it is set for the duration of `run` only, while the
        // mapping is alive. A byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the [`kick_signal`] handler once per process.
fn install_kick_handler() -> Result<(), KvmUnavailable> {
    static RESULT: OnceLock<i32> = OnceLock::new();
    let r = *RESULT.get_or_init(|| {
        // SAFETY: plain sigaction setup with a zeroed struct; the handler only
        // performs an async-signal-safe store. SA_RESTART keeps device code's
        // syscalls from failing with EINTR; KVM_RUN still returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
            }
        }
    });
    if r == 0 {
        Ok(())
    } else {
        Err(KvmUnavailable::Other(format!(
            "cannot install the vCPU kick signal handler: {}",
            std::io::Error::from_raw_os_error(r)
        )))
    }
}

/// A POSIX timer that sends [`kick_signal`] to one thread.
struct SliceTimer {
    id: usize,
    tid: libc::pid_t,
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

impl SliceTimer {
    /// A disarmed timer aimed at the calling thread.
    fn for_current_thread() -> std::io::Result<Self> {
        let tid = gettid();
        // SAFETY: sigevent is plain data; zeroed then filled for
        // SIGEV_THREAD_ID delivery to this thread; timer_create writes the id.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = kick_signal();
            sev.sigev_notify_thread_id = tid;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(SliceTimer {
                id: id as usize,
                tid,
            })
        }
    }

    /// Fires once after `d` (a zero duration disarms).
    fn set(&self, d: Duration) -> std::io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `id` is a live timer created by timer_create.
        let r = unsafe { libc::timer_settime(id_ptr(self.id), 0, &spec, std::ptr::null_mut()) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

fn id_ptr(id: usize) -> libc::timer_t {
    id as libc::timer_t
}

impl Drop for SliceTimer {
    fn drop(&mut self) {
        // SAFETY: `id` is a live timer owned by this struct.
        unsafe { libc::timer_delete(id_ptr(self.id)) };
    }
}

/// Guest-physical ranges of `0..ram_size` not claimed (even partly, at page
/// granularity) by an MMIO device: these become KVM memory slots, so guest
/// accesses to MMIO inside RAM (VGA window, ROM shadows...) exit to
/// userspace.
fn ram_slots(space: &AddressSpace) -> Vec<(u64, u64)> {
    fn walk(space: &AddressSpace, lo: u64, hi: u64, out: &mut Vec<(u64, u64)>) {
        if lo >= hi {
            return;
        }
        if !space.mmio.overlaps(lo, hi - lo) {
            match out.last_mut() {
                Some(last) if last.1 == lo => last.1 = hi,
                _ => out.push((lo, hi)),
            }
            return;
        }
        if hi - lo <= PAGE {
            return;
        }
        let half = ((hi - lo) / 2) & !(PAGE - 1);
        let mid = lo + half.max(PAGE);
        walk(space, lo, mid, out);
        walk(space, mid, hi, out);
    }
    let mut out = Vec::new();
    walk(space, 0, space.ram.below_4g() & !(PAGE - 1), &mut out);
    let above = space.ram.above_4g() & !(PAGE - 1);
    if above > 0 {
        let start = crate::memory::PCI_HOLE_END;
        walk(space, start, start + above, &mut out);
    }
    out
}

/// A KVM VM with one vCPU running over an [`AddressSpace`].
///
/// Not tied to a thread: `run` may be called from any one thread at a time
/// (the time-slice timer follows the calling thread).
pub struct KvmVcpu {
    vcpu: VcpuFd,
    _vm: VmFd,
    space: Arc<AddressSpace>,
    info: KvmInfo,
    run_size: usize,
    shared: Arc<KickShared>,
    timer: Option<SliceTimer>,
    intc: Option<Arc<dyn InterruptController>>,
}

impl KvmVcpu {
    /// Creates a VM whose RAM is `space.ram` at guest-physical 0 (minus pages
    /// claimed by MMIO devices) and one vCPU with the host's supported CPUID,
    /// in KVM's reset state. Refuses PVM unless `allow_paravirtual` (for
    /// tests that only run real-mode code).
    pub fn new(space: &Arc<AddressSpace>, allow_paravirtual: bool) -> Result<Self, KvmUnavailable> {
        let (kvm, info, pvm) = open_checked()?;
        if let Some(evidence) = pvm {
            if !allow_paravirtual {
                return Err(KvmUnavailable::Paravirtual(evidence));
            }
            tracing::warn!("using paravirtual /dev/kvm ({evidence}): only real-mode code will run");
        }
        install_kick_handler()?;
        let vm = kvm.create_vm().map_err(other("KVM_CREATE_VM"))?;
        if info.set_tss_addr {
            if space.ram.size() > IDENTITY_MAP_ADDR {
                tracing::warn!("guest RAM overlaps KVM's real-mode TSS area at {TSS_ADDR:#x}");
            }
            if let Err(e) = vm.set_identity_map_address(IDENTITY_MAP_ADDR) {
                tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR failed: {e}");
            }
            if let Err(e) = vm.set_tss_address(TSS_ADDR as usize) {
                tracing::debug!("KVM_SET_TSS_ADDR failed: {e}");
            }
        }
        let slots = ram_slots(space);
        if slots.len() > info.memslots {
            return Err(KvmUnavailable::Other(format!(
                "guest RAM needs {} memory slots, KVM offers {}",
                slots.len(),
                info.memslots
            )));
        }
        for (slot, &(lo, hi)) in slots.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: lo,
                memory_size: hi - lo,
                userspace_addr: match space.ram.ptr(lo, hi - lo) {
                    Some(p) => p as u64,
                    None => {
                        return Err(KvmUnavailable::Other(format!(
                            "guest RAM slot {lo:#x}..{hi:#x} is not RAM"
                        )))
                    }
                },
            };
            // SAFETY: the range lies inside the guest RAM mapping (checked by
            // `ptr`), which lives as long as `space`; this
            // struct holds `space` and drops the VM first.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(other("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(other("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(other("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(other("KVM_SET_CPUID2"))?;
        let run_size = kvm
            .get_vcpu_mmap_size()
            .map_err(other("KVM_GET_VCPU_MMAP_SIZE"))?;
        tracing::info!(
            "KVM ({}): {} MiB of RAM in {} slot(s)",
            info.backend,
            space.ram.size() >> 20,
            slots.len()
        );
        Ok(KvmVcpu {
            vcpu,
            _vm: vm,
            space: space.clone(),
            info,
            run_size,
            shared: Arc::default(),
            timer: None,
            intc: None,
        })
    }

    /// What the probe found when this vCPU was created.
    pub fn info(&self) -> &KvmInfo {
        &self.info
    }

    /// A handle other threads use to make `run` return.
    pub fn kicker(&self) -> KvmKicker {
        KvmKicker {
            shared: self.shared.clone(),
        }
    }

    /// Lets `run` inject interrupts from `intc` by itself (before every
    /// entry, after HLT and when the interrupt window opens). Devices raising
    /// an interrupt from another thread should then kick the vCPU.
    pub fn set_interrupt_controller(&mut self, intc: Arc<dyn InterruptController>) {
        self.intc = Some(intc);
    }

    /// Reads the registers.
    pub fn state(&self) -> Result<KvmState, KvmError> {
        let r = self.vcpu.get_regs().map_err(ioctl_err("KVM_GET_REGS"))?;
        let s = self.vcpu.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        Ok(KvmState {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            seg: [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs].map(seg_from_kvm),
            ldtr: seg_from_kvm(&s.ldt),
            tr: seg_from_kvm(&s.tr),
            gdtr: dtable_from_kvm(&s.gdt),
            idtr: dtable_from_kvm(&s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
        })
    }

    /// Loads the registers (APIC base and pending-interrupt bitmap are kept).
    pub fn set_state(&mut self, st: &KvmState) -> Result<(), KvmError> {
        let g = &st.gpr;
        let regs = kvm_bindings::kvm_regs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: st.rip,
            rflags: st.rflags | 2,
        };
        let mut s = self.vcpu.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        use crate::cpu::{CS, DS, ES, FS, GS, SS};
        s.es = seg_to_kvm(&st.seg[ES]);
        s.cs = seg_to_kvm(&st.seg[CS]);
        s.ss = seg_to_kvm(&st.seg[SS]);
        s.ds = seg_to_kvm(&st.seg[DS]);
        s.fs = seg_to_kvm(&st.seg[FS]);
        s.gs = seg_to_kvm(&st.seg[GS]);
        s.ldt = seg_to_kvm(&st.ldtr);
        s.tr = seg_to_kvm(&st.tr);
        if st.tr.attr & attr::P == 0 {
            s.tr.type_ = 11;
            s.tr.present = 1;
            s.tr.s = 0;
            s.tr.unusable = 0;
        }
        s.gdt = dtable_to_kvm(&st.gdtr);
        s.idt = dtable_to_kvm(&st.idtr);
        s.cr0 = st.cr0;
        s.cr2 = st.cr2;
        s.cr3 = st.cr3;
        s.cr4 = st.cr4;
        s.cr8 = st.cr8;
        s.efer = st.efer;
        self.vcpu
            .set_sregs(&s)
            .map_err(ioctl_err("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&regs)
            .map_err(ioctl_err("KVM_SET_REGS"))?;
        // Without an in-kernel LAPIC, KVM_RUN loads CR8 from kvm_run.cr8.
        self.vcpu.get_kvm_run().cr8 = st.cr8;
        Ok(())
    }

    /// Injects the interrupt `intc` asserts if the guest can take it now
    /// (KVM says it is ready and RFLAGS.IF is set, as of the last exit);
    /// otherwise asks KVM to exit when it can (`request_interrupt_window`).
    /// Returns true if a vector was injected.
    pub fn inject_interrupt_if_ready(&mut self, intc: &dyn InterruptController) -> bool {
        let fd = self.vcpu.as_raw_fd();
        let run = self.vcpu.get_kvm_run();
        if !intc.has_interrupt() {
            run.request_interrupt_window = 0;
            return false;
        }
        if run.ready_for_interrupt_injection == 0 || run.if_flag == 0 {
            run.request_interrupt_window = 1;
            return false;
        }
        let Some(vector) = intc.acknowledge() else {
            run.request_interrupt_window = 0;
            return false;
        };
        let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
        // SAFETY: KVM_INTERRUPT on a vCPU fd reads one kvm_interrupt.
        let r = unsafe { libc::ioctl(fd, KVM_INTERRUPT, &irq) };
        if r != 0 {
            tracing::warn!(
                "KVM_INTERRUPT of vector {vector:#x} failed: {}",
                std::io::Error::last_os_error()
            );
            return false;
        }
        // Another interrupt waiting: come back once this one is delivered.
        run.request_interrupt_window = intc.has_interrupt() as u8;
        true
    }

    /// Runs the guest for at most about `max`, handling port-I/O and MMIO
    /// exits on the address space's buses, until something the caller must
    /// act on happens (see [`KvmExit`]).
    ///
    /// Every return leaves the guest state complete (a pending I/O is
    /// finished by re-entering KVM with `immediate_exit` set, per api.rst),
    /// so [`KvmVcpu::state`] may be read after any exit.
    pub fn run(&mut self, max: Duration) -> Result<KvmExit, KvmError> {
        let deadline = Instant::now().checked_add(max);
        let guard = self.begin_run(max)?;
        let result = self.run_loop(deadline);
        if let Some(t) = &self.timer {
            let _ = t.set(Duration::ZERO);
        }
        drop(guard);
        result
    }

    /// Aims the timer at this thread, publishes `immediate_exit` to the
    /// signal handler, registers the thread for kicks and arms the timer.
    fn begin_run(&mut self, max: Duration) -> Result<RunGuard, KvmError> {
        let tid = gettid();
        if self.timer.as_ref().is_none_or(|t| t.tid != tid) {
            self.timer = None;
            self.timer = Some(SliceTimer::for_current_thread().map_err(KvmError::Timer)?);
        }
        // SAFETY: sigset operations on a local set; unblocks the kick signal
        // for this thread in case it inherited a mask blocking it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, kick_signal());
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        // No handler can set it while IMMEDIATE_EXIT is null (between runs).
        self.vcpu.set_kvm_immediate_exit(0);
        let ie = &mut self.vcpu.get_kvm_run().immediate_exit as *mut u8;
        IMMEDIATE_EXIT.with(|c| c.set(ie));
        // SAFETY: pthread_self cannot fail.
        *crate::bus::lock(&self.shared.thread) = Some(unsafe { libc::pthread_self() });
        let guard = RunGuard {
            shared: self.shared.clone(),
        };
        if let Some(t) = &self.timer {
            t.set(max.max(Duration::from_micros(1)))
                .map_err(KvmError::Timer)?;
        }
        Ok(guard)
    }

    fn run_loop(&mut self, deadline: Option<Instant>) -> Result<KvmExit, KvmError> {
        // After an I/O exit KVM must be re-entered to complete the access;
        // a kick or the timer then makes that entry return at once.
        let mut must_enter = false;
        loop {
            if !must_enter
                && (self.shared.kick.swap(false, Ordering::SeqCst)
                    || deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Ok(KvmExit::TimeSlice);
            }
            if let Some(intc) = self.intc.clone() {
                self.inject_interrupt_if_ready(intc.as_ref());
            }
            // Port-I/O data is located here and handled once the borrow of
            // the vCPU ends (the element size is in kvm_run).
            let pio = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(_, data)) => Some(PioData::Out(data.as_ptr(), data.len())),
                Ok(VcpuExit::IoIn(_, data)) => Some(PioData::In(data.as_mut_ptr(), data.len())),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    let n = data.len().min(8);
                    let v = self.space.read_phys(addr, n);
                    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
                    must_enter = true;
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    let n = data.len().min(8);
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&data[..n]);
                    self.space.write_phys(addr, n, u64::from_le_bytes(b));
                    must_enter = true;
                    None
                }
                Ok(VcpuExit::Hlt) => {
                    let pending = self.intc.as_ref().is_some_and(|i| i.has_interrupt());
                    if !(pending && self.vcpu.get_kvm_run().if_flag != 0) {
                        return Ok(KvmExit::Halted);
                    }
                    must_enter = false;
                    None
                }
                Ok(VcpuExit::IrqWindowOpen) => {
                    if self.intc.is_none() {
                        return Ok(KvmExit::InterruptWindow);
                    }
                    must_enter = false;
                    None
                }
                Ok(VcpuExit::Shutdown) => return Ok(KvmExit::Shutdown),
                Ok(VcpuExit::Intr) => return Ok(KvmExit::TimeSlice),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Ok(KvmExit::FailEntry { reason, cpu });
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => return Ok(KvmExit::SystemEvent(kind)),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                    // `internal` member of the union is the valid one.
                    let i = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal };
                    let n = (i.ndata as usize).min(i.data.len());
                    return Ok(KvmExit::InternalError {
                        suberror: i.suberror,
                        data: i.data[..n].to_vec(),
                    });
                }
                Ok(other) => return Ok(KvmExit::Unexpected(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.shared.kick.store(false, Ordering::SeqCst);
                    return Ok(KvmExit::TimeSlice);
                }
                Err(e) => return Err(ioctl_err("KVM_RUN")(e)),
            };
            if let Some(data) = pio {
                self.dispatch_pio(data);
                must_enter = true;
            }
        }
    }

    /// Performs the port I/O of a KVM_EXIT_IO whose data (count × size
    /// bytes) is `data`: one bus access per element for string I/O.
    fn dispatch_pio(&mut self, data: PioData) {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_IO, so `io` is the valid member.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = (io.size as usize).max(1);
        let len = match data {
            PioData::Out(_, n) | PioData::In(_, n) => n,
        };
        let in_bounds = (io.data_offset as usize)
            .checked_add(len)
            .is_some_and(|end| end <= self.run_size);
        if !in_bounds || len != size * io.count as usize {
            tracing::warn!("malformed KVM_EXIT_IO (size {size}, count {})", io.count);
            return;
        }
        let port = io.port as u64;
        match data {
            PioData::Out(p, n) => {
                // SAFETY: `p..p+n` is the I/O data area kvm-ioctls handed out
                // for this exit: inside the kvm_run mapping (checked above),
                // past the kvm_run struct `run` refers to, and not written by
                // anyone until the next KVM_RUN.
                let bytes = unsafe { std::slice::from_raw_parts(p, n) };
                for chunk in bytes.chunks(size) {
                    self.space.pio.write(port, chunk);
                }
            }
            PioData::In(p, n) => {
                // SAFETY: as above; KVM reads the area at the next KVM_RUN.
                let bytes = unsafe { std::slice::from_raw_parts_mut(p, n) };
                for chunk in bytes.chunks_mut(size) {
                    self.space.pio.read(port, chunk);
                }
            }
        }
    }
}

/// The I/O data area of a KVM_EXIT_IO (pointer and length in bytes).
enum PioData {
    Out(*const u8, usize),
    In(*mut u8, usize),
}

/// Ends a `run`, even on panic: unregisters the thread from kicks and
/// hides `immediate_exit` from the signal handler, after which a late
/// signal is harmless.
struct RunGuard {
    shared: Arc<KickShared>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        *crate::bus::lock(&self.shared.thread) = None;
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::AddressSpace;
    use crate::cpu::{cr0, reg, CS, DS, ES, SS};
    use crate::memory::GuestRam;
    use std::sync::atomic::AtomicU32;
    use vireo_devices::BusDevice;

    /// Records writes; reads return `read_value`.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
        read_value: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self
                    .read_value
                    .wrapping_add(offset as u8)
                    .wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    type Rec = Arc<Mutex<Recorder>>;

    fn recorder(read_value: u8) -> Rec {
        Arc::new(Mutex::new(Recorder {
            writes: Vec::new(),
            read_value,
        }))
    }

    /// A vCPU allowed to be PVM (real-mode tests), or None with the reason
    /// printed.
    fn real_mode_vcpu(space: &Arc<AddressSpace>) -> Option<KvmVcpu> {
        match KvmVcpu::new(space, true) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    fn writes(r: &Rec) -> Vec<(u64, Vec<u8>)> {
        crate::bus::lock(r).writes.clone()
    }

    /// Runs until something other than a time slice happens (at most `secs`).
    fn run_until_exit(v: &mut KvmVcpu, secs: u64) -> KvmExit {
        let start = Instant::now();
        loop {
            let e = v.run(Duration::from_millis(100)).expect("KVM_RUN");
            if e != KvmExit::TimeSlice || start.elapsed() > Duration::from_secs(secs) {
                return e;
            }
        }
    }

    #[test]
    fn real_mode_program_does_arithmetic_memory_and_port_io() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut space = AddressSpace::new(ram);
        let (p80, p400, mmio) = (recorder(0), recorder(0x40), recorder(0x10));
        space.pio.insert(0x80, 1, p80.clone()).unwrap();
        space.pio.insert(0x400, 4, p400.clone()).unwrap();
        // MMIO inside RAM: its page must not be a KVM memory slot.
        space.mmio.insert(0xd0000, 0x100, mmio.clone()).unwrap();
        let space = Arc::new(space);
        let Some(mut v) = real_mode_vcpu(&space) else {
            return;
        };
        #[rustfmt::skip]
        let code: &[u8] = &[
            0xb8, 0x34, 0x12,       // mov ax, 0x1234
            0xbb, 0x01, 0x01,       // mov bx, 0x0101
            0x01, 0xd8,             // add ax, bx          ; 0x1335
            0xb9, 0x05, 0x00,       // mov cx, 5
            0x01, 0xc8,             // l: add ax, cx
            0x49,                   // dec cx
            0x75, 0xfb,             // jnz l               ; ax = 0x1344
            0xa3, 0x00, 0x20,       // mov [0x2000], ax
            0xb0, 0x5a,             // mov al, 0x5a
            0xe6, 0x80,             // out 0x80, al
            0xba, 0x01, 0x04,       // mov dx, 0x401
            0xb8, 0xef, 0xbe,       // mov ax, 0xbeef
            0xef,                   // out dx, ax
            0xec,                   // in al, dx           ; 0x41 -> ax = 0xbe41
            0xa3, 0x02, 0x20,       // mov [0x2002], ax
            0xbe, 0x00, 0x30,       // mov si, 0x3000
            0xb9, 0x04, 0x00,       // mov cx, 4
            0xf3, 0x6e,             // rep outsb           ; "ABCD" to port 0x401
            0xb8, 0x00, 0xd0,       // mov ax, 0xd000
            0x8e, 0xc0,             // mov es, ax
            0x26, 0xc7, 0x06, 0x10, 0x00, 0x77, 0x66, // mov word es:[0x10], 0x6677 (MMIO)
            0x26, 0x8b, 0x3e, 0x20, 0x00,             // mov di, es:[0x20] (MMIO read)
            0x26, 0xc7, 0x06, 0x00, 0x08, 0x44, 0x33, // mov word es:[0x800], 0x3344 (RAM, same page)
            0x26, 0x8b, 0x2e, 0x00, 0x08,             // mov bp, es:[0x800]
            0xf4,                   // hlt
        ];
        space.ram.write_bytes(0x1000, code);
        space.ram.write_bytes(0x3000, b"ABCD");
        let mut st = KvmState::real_mode(0, 0x1000);
        st.gpr[reg::RSP] = 0x8000;
        v.set_state(&st).unwrap();
        let t = Instant::now();
        let exit = run_until_exit(&mut v, 10);
        eprintln!("real-mode program ran in {:?}", t.elapsed());
        assert_eq!(exit, KvmExit::Halted);
        let s = v.state().unwrap();
        assert_eq!(s.rip, 0x1000 + code.len() as u64, "RIP after HLT");
        assert_eq!(s.gpr[reg::RAX] & 0xffff, 0xd000);
        assert_eq!(s.gpr[reg::RBX] & 0xffff, 0x0101);
        assert_eq!(s.gpr[reg::RCX] & 0xffff, 0);
        assert_eq!(s.gpr[reg::RSI] & 0xffff, 0x3004);
        assert_eq!(s.gpr[reg::RDI] & 0xffff, 0x3130, "MMIO read of 0xd0020");
        assert_eq!(s.gpr[reg::RBP] & 0xffff, 0x3344);
        assert_eq!(s.seg[ES].selector, 0xd000);
        assert_eq!(s.seg[ES].base, 0xd0000);
        assert_eq!(space.ram.read_u32(0x2000), 0xbe41_1344);
        assert_eq!(space.ram.read_u32(0xd0800) & 0xffff, 0x3344);
        assert_eq!(writes(&p80), vec![(0, vec![0x5a])]);
        assert_eq!(
            writes(&p400),
            vec![
                (1, vec![0xef, 0xbe]),
                (1, vec![b'A']),
                (1, vec![b'B']),
                (1, vec![b'C']),
                (1, vec![b'D']),
            ]
        );
        assert_eq!(writes(&mmio), vec![(0x10, vec![0x77, 0x66])]);
    }

    #[test]
    fn time_slice_ends_a_busy_loop_and_kicks_work() {
        let space = Arc::new(AddressSpace::new(GuestRam::new(1 << 20).unwrap()));
        let Some(mut v) = real_mode_vcpu(&space) else {
            return;
        };
        space.ram.write_bytes(0x1000, &[0xeb, 0xfe]); // jmp $
        v.set_state(&KvmState::real_mode(0, 0x1000)).unwrap();
        // Time slice.
        let t = Instant::now();
        assert_eq!(
            v.run(Duration::from_millis(50)).unwrap(),
            KvmExit::TimeSlice
        );
        let took = t.elapsed();
        eprintln!("50 ms slice took {took:?}");
        assert!(took >= Duration::from_millis(45) && took < Duration::from_secs(2));
        assert_eq!(v.state().unwrap().rip, 0x1000);
        // Kick from another thread during a long slice.
        let k = v.kicker();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            k.kick();
        });
        let t = Instant::now();
        assert_eq!(v.run(Duration::from_secs(30)).unwrap(), KvmExit::TimeSlice);
        h.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "kick took {:?}",
            t.elapsed()
        );
        // A kick while not running ends the next run at once.
        v.kicker().kick();
        let t = Instant::now();
        assert_eq!(v.run(Duration::from_secs(30)).unwrap(), KvmExit::TimeSlice);
        assert!(t.elapsed() < Duration::from_secs(1));
        // And the one after runs its full slice again.
        let t = Instant::now();
        assert_eq!(
            v.run(Duration::from_millis(20)).unwrap(),
            KvmExit::TimeSlice
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
        // Runs from another thread retarget the timer.
        let h = std::thread::spawn(move || {
            let t = Instant::now();
            let e = v.run(Duration::from_millis(30)).unwrap();
            (e, t.elapsed())
        });
        let (e, took) = h.join().unwrap();
        assert_eq!(e, KvmExit::TimeSlice);
        assert!(took < Duration::from_secs(2));
    }

    /// Returns 1, 2, 3... on successive reads.
    struct Counter(u8);

    impl BusDevice for Counter {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.0 = self.0.wrapping_add(1);
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn time_slices_never_leave_an_in_half_done() {
        let mut space = AddressSpace::new(GuestRam::new(1 << 20).unwrap());
        let counter = Arc::new(Mutex::new(Counter(0)));
        space.pio.insert(0x90, 1, counter.clone()).unwrap();
        let space = Arc::new(space);
        let Some(mut v) = real_mode_vcpu(&space) else {
            return;
        };
        space.ram.write_bytes(0x1000, &[0xe4, 0x90, 0xeb, 0xfc]); // l: in al, 0x90; jmp l
        v.set_state(&KvmState::real_mode(0, 0x1000)).unwrap();
        for _ in 0..50 {
            assert_eq!(
                v.run(Duration::from_micros(500)).unwrap(),
                KvmExit::TimeSlice
            );
            let s = v.state().unwrap();
            let last = crate::bus::lock(&counter).0;
            assert_eq!(s.gpr[reg::RAX] as u8, last, "AL holds the last value read");
            assert!(s.rip == 0x1000 || s.rip == 0x1002, "rip {:#x}", s.rip);
        }
        assert!(crate::bus::lock(&counter).0 != 0);
    }

    /// Asserts INTR with vector 0x20 until acknowledged.
    struct OneShot {
        pending: AtomicBool,
        acks: AtomicU32,
    }

    impl InterruptController for OneShot {
        fn has_interrupt(&self) -> bool {
            self.pending.load(Ordering::SeqCst)
        }
        fn acknowledge(&self) -> Option<u8> {
            self.acks.fetch_add(1, Ordering::SeqCst);
            self.pending.swap(false, Ordering::SeqCst).then_some(0x20)
        }
    }

    #[test]
    fn injects_interrupts_in_real_mode() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut space = AddressSpace::new(ram);
        let p80 = recorder(0);
        space.pio.insert(0x80, 1, p80.clone()).unwrap();
        let space = Arc::new(space);
        let Some(mut v) = real_mode_vcpu(&space) else {
            return;
        };
        // IVT[0x20] = 0000:1100; handler: mov al, 0x77; out 0x80, al; iret.
        space.ram.write_u32(0x20 * 4, 0x0000_1100);
        space
            .ram
            .write_bytes(0x1100, &[0xb0, 0x77, 0xe6, 0x80, 0xcf]);
        // Main: sti; hlt; mov al, 1; out 0x80, al; cli; hlt.
        let main = [0xfb, 0xf4, 0xb0, 0x01, 0xe6, 0x80, 0xfa, 0xf4];
        space.ram.write_bytes(0x1000, &main);
        let mut st = KvmState::real_mode(0, 0x1000);
        st.gpr[reg::RSP] = 0x8000;
        v.set_state(&st).unwrap();
        let intc = Arc::new(OneShot {
            pending: AtomicBool::new(false),
            acks: AtomicU32::new(0),
        });
        v.set_interrupt_controller(intc.clone());
        // Nothing pending: the first HLT returns.
        assert_eq!(run_until_exit(&mut v, 10), KvmExit::Halted);
        assert_eq!(v.state().unwrap().rip, 0x1002);
        intc.pending.store(true, Ordering::SeqCst);
        assert_eq!(run_until_exit(&mut v, 10), KvmExit::Halted);
        assert_eq!(writes(&p80), vec![(0, vec![0x77]), (0, vec![0x01])]);
        assert_eq!(intc.acks.load(Ordering::SeqCst), 1);
        let s = v.state().unwrap();
        assert_eq!(s.rip, 0x1000 + main.len() as u64);
        assert_eq!(s.gpr[reg::RSP], 0x8000, "IRET popped the frame");
    }

    #[test]
    fn probe_reports_pvm_on_this_host() {
        let r = probe();
        eprintln!("probe: {r:?}");
        if !Path::new("/sys/module/kvm_pvm").exists() || !Path::new(KVM_DEVICE).exists() {
            eprintln!("skipped: not a PVM host");
            return;
        }
        let e = r.expect_err("PVM must be refused");
        assert!(matches!(e, KvmUnavailable::Paravirtual(_)), "{e:?}");
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(msg.starts_with(
            "/dev/kvm is PVM (paravirtual KVM), which cannot run unmodified protected-mode guests"
        ));
        assert!(!msg.contains('\n'));
        let space = Arc::new(AddressSpace::new(GuestRam::new(1 << 20).unwrap()));
        assert!(matches!(
            KvmVcpu::new(&space, false),
            Err(KvmUnavailable::Paravirtual(_))
        ));
    }

    #[test]
    fn protected_mode_program_on_hardware_kvm() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut space = AddressSpace::new(ram);
        let p80 = recorder(0);
        space.pio.insert(0x80, 1, p80.clone()).unwrap();
        let space = Arc::new(space);
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        let mut v = KvmVcpu::new(&space, false).expect("probe said KVM works");
        // GDT: null, flat code (0x08), flat data (0x10).
        let gdt: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
        for (i, d) in gdt.iter().enumerate() {
            space
                .ram
                .write_bytes(0x500 + 8 * i as u64, &d.to_le_bytes());
        }
        #[rustfmt::skip]
        let code: &[u8] = &[
            0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
            0x05, 0x11, 0x11, 0x11, 0x11, // add eax, 0x11111111
            0xa3, 0x00, 0x20, 0x00, 0x00, // mov [0x2000], eax
            0xe6, 0x80,                   // out 0x80, al
            0xf4,                         // hlt
        ];
        space.ram.write_bytes(0x1000, code);
        let mut st = KvmState::real_mode(0, 0);
        st.cr0 = cr0::PE | cr0::ET;
        st.seg = [Segment::flat32(0x10, false); 6];
        st.seg[CS] = Segment::flat32(0x08, true);
        st.seg[SS] = Segment::flat32(0x10, false);
        st.seg[DS] = Segment::flat32(0x10, false);
        st.tr = Segment::default();
        st.gdtr = DescriptorTable {
            base: 0x500,
            limit: 23,
        };
        st.rip = 0x1000;
        st.gpr[reg::RSP] = 0x8000;
        v.set_state(&st).unwrap();
        assert_eq!(run_until_exit(&mut v, 10), KvmExit::Halted);
        assert_eq!(space.ram.read_u32(0x2000), 0x2345_6789);
        assert_eq!(writes(&p80), vec![(0, vec![0x89])]);
        assert_eq!(v.state().unwrap().seg[CS].attr & attr::DB, attr::DB);
    }

    fn fake_sys(mods: &[&str]) -> std::path::PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-kvm-sys-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        for m in mods {
            std::fs::create_dir_all(dir.join(m)).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn detects_backends() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let svm = "flags\t\t: fpu svm\n";
        let none = "flags\t\t: fpu hypervisor sse2\n";
        let d = fake_sys(&["kvm", "kvm_intel"]);
        assert_eq!(
            detect_backend(&d, Some(vmx), false),
            (KvmBackend::Vmx, None)
        );
        assert_eq!(detect_backend(&d, None, false), (KvmBackend::Vmx, None));
        assert_eq!(detect_backend(&d, Some(vmx), true).0, KvmBackend::Pvm);
        let d = fake_sys(&["kvm", "kvm_amd"]);
        assert_eq!(
            detect_backend(&d, Some(svm), false),
            (KvmBackend::Svm, None)
        );
        let d = fake_sys(&["kvm", "kvm_pvm"]);
        let (b, why) = detect_backend(&d, Some(none), false);
        assert_eq!(b, KvmBackend::Pvm);
        assert!(why.unwrap().contains("kvm_pvm"));
        // Built-in kvm_intel with parameters but no VMX: PVM is the backend.
        let d = fake_sys(&["kvm", "kvm_intel", "kvm_pvm"]);
        assert_eq!(detect_backend(&d, Some(none), false).0, KvmBackend::Pvm);
        // No vendor module visible.
        let d = fake_sys(&["kvm"]);
        assert_eq!(
            detect_backend(&d, Some(vmx), false),
            (KvmBackend::Unknown, None)
        );
        assert!(detect_backend(&d, Some(none), false).1.is_some());
    }

    #[test]
    fn open_errors_have_actionable_messages() {
        assert_eq!(
            classify_open_error(libc::EACCES).to_string(),
            "/dev/kvm: permission denied; add your user to the 'kvm' group \
             (sudo usermod -aG kvm $USER) and log in again"
        );
        assert_eq!(classify_open_error(libc::ENOENT), KvmUnavailable::NoDevice);
        assert!(matches!(
            classify_open_error(libc::ENXIO),
            KvmUnavailable::Other(_)
        ));
    }

    #[test]
    fn segments_round_trip_through_kvm_layout() {
        for s in [
            Segment::real(0x1234),
            Segment::flat32(8, true),
            Segment {
                selector: 0x2b,
                base: 0x7000,
                limit: 0xfff,
                attr: attr::P | attr::S | attr::L | (3 << 5) | 0xb | (1 << 12),
            },
        ] {
            let k = seg_to_kvm(&s);
            assert_eq!(seg_from_kvm(&k), s);
        }
        let k = seg_to_kvm(&Segment::flat32(8, true));
        assert_eq!(
            (k.type_, k.s, k.present, k.db, k.g, k.l),
            (0xb, 1, 1, 1, 1, 0)
        );
        assert_eq!(seg_to_kvm(&Segment::default()).unusable, 1);
    }

    #[test]
    fn ram_slots_skip_mmio_pages() {
        let mut space = AddressSpace::new(GuestRam::new(1 << 20).unwrap());
        space.mmio.insert(0xa0000, 0x20000, recorder(0)).unwrap();
        space.mmio.insert(0xd0010, 0x10, recorder(0)).unwrap();
        assert_eq!(
            ram_slots(&space),
            vec![(0, 0xa0000), (0xc0000, 0xd0000), (0xd1000, 0x100000)]
        );
        let space = AddressSpace::new(GuestRam::new(1 << 20).unwrap());
        assert_eq!(ram_slots(&space), vec![(0, 0x100000)]);
    }

    #[test]
    fn vcpu_is_send() {
        fn send<T: Send>() {}
        send::<KvmVcpu>();
        send::<KvmKicker>();
    }

    /// Manual experiment: which non-real-mode guests run on PVM? Run with
    /// `--ignored --nocapture` under `timeout`.
    #[test]
    #[ignore]
    fn pvm_mode_experiments() {
        fn attempt(name: &str, setup: impl FnOnce(&AddressSpace, &mut KvmState)) {
            let ram = GuestRam::new(4 << 20).unwrap();
            let mut space = AddressSpace::new(ram);
            let p80 = recorder(0);
            space.pio.insert(0x80, 1, p80.clone()).unwrap();
            let space = Arc::new(space);
            let Some(mut v) = real_mode_vcpu(&space) else {
                return;
            };
            let gdt: [u64; 4] = [
                0,
                0x00cf_9b00_0000_ffff,
                0x00cf_9300_0000_ffff,
                0x00af_9b00_0000_ffff,
            ];
            for (i, d) in gdt.iter().enumerate() {
                space
                    .ram
                    .write_bytes(0x500 + 8 * i as u64, &d.to_le_bytes());
            }
            let mut st = KvmState::real_mode(0, 0);
            st.gdtr = DescriptorTable {
                base: 0x500,
                limit: 31,
            };
            st.gpr[reg::RSP] = 0x8000;
            setup(&space, &mut st);
            if let Err(e) = v.set_state(&st) {
                eprintln!("{name}: set_state: {e}");
                return;
            }
            let t = Instant::now();
            let e = v.run(Duration::from_millis(500));
            let s = v.state().unwrap();
            eprintln!(
                "{name}: {e:?} after {:?}, rip {:#x}, port 0x80 {:?}",
                t.elapsed(),
                s.rip,
                writes(&p80)
            );
        }
        let pm = |st: &mut KvmState| {
            st.cr0 = cr0::PE | cr0::ET;
            st.seg = [Segment::flat32(0x10, false); 6];
            st.seg[CS] = Segment::flat32(0x08, true);
            st.tr = Segment::default();
            st.rip = 0x1000;
        };
        attempt("32-bit flat", |sp, st| {
            pm(st);
            sp.ram.write_bytes(0x1000, &[0xb0, 0x11, 0xe6, 0x80, 0xf4]);
        });
        attempt("32-bit paging (PSE)", |sp, st| {
            pm(st);
            sp.ram.write_u32(0x10000, 0x83);
            st.cr3 = 0x10000;
            st.cr4 = 1 << 4;
            st.cr0 |= cr0::PG;
            sp.ram.write_bytes(0x1000, &[0xb0, 0x12, 0xe6, 0x80, 0xf4]);
        });
        attempt("32-bit IDT + int 0x30", |sp, st| {
            pm(st);
            // Interrupt gate 0x30 -> 0x08:0x1100.
            let gate: u64 = 0x1100 | (0x08 << 16) | (0x8e00u64 << 32);
            sp.ram.write_bytes(0x2000 + 0x30 * 8, &gate.to_le_bytes());
            st.idtr = DescriptorTable {
                base: 0x2000,
                limit: 0x7ff,
            };
            sp.ram.write_bytes(0x1100, &[0xb0, 0x13, 0xe6, 0x80, 0xcf]);
            sp.ram
                .write_bytes(0x1000, &[0xcd, 0x30, 0xb0, 0x14, 0xe6, 0x80, 0xf4]);
        });
        attempt("real -> protected switch in guest", |sp, st| {
            st.rip = 0x1000;
            // GDTR image at 0x1200.
            sp.ram.write_bytes(0x1200, &[31, 0, 0x00, 0x05, 0, 0]);
            #[rustfmt::skip]
            sp.ram.write_bytes(0x1000, &[
                0xfa,                               // cli
                0x0f, 0x01, 0x16, 0x00, 0x12,       // lgdt [0x1200]
                0x0f, 0x20, 0xc0,                   // mov eax, cr0
                0x0c, 0x01,                         // or al, 1
                0x0f, 0x22, 0xc0,                   // mov cr0, eax
                0xea, 0x20, 0x10, 0x08, 0x00,       // jmp 0x08:0x1020
            ]);
            #[rustfmt::skip]
            sp.ram.write_bytes(0x1020, &[
                0x66, 0xb8, 0x10, 0x00,             // mov ax, 0x10
                0x8e, 0xd8,                         // mov ds, ax
                0xb0, 0x15, 0xe6, 0x80, 0xf4,       // mov al,0x15; out 0x80,al; hlt
            ]);
        });
        attempt("64-bit long mode", |sp, st| {
            pm(st);
            sp.ram.write_bytes(0x10000, &(0x11003u64).to_le_bytes());
            sp.ram.write_bytes(0x11000, &(0x12003u64).to_le_bytes());
            sp.ram.write_bytes(0x12000, &(0x83u64).to_le_bytes());
            st.cr3 = 0x10000;
            st.cr4 = 1 << 5;
            st.efer = crate::cpu::efer::LME | crate::cpu::efer::LMA;
            st.cr0 |= cr0::PG;
            st.seg[CS] = Segment {
                selector: 0x18,
                base: 0,
                limit: 0xffff_ffff,
                attr: attr::P | attr::S | attr::L | attr::G | 0xb,
            };
            sp.ram.write_bytes(0x1000, &[0xb0, 0x16, 0xe6, 0x80, 0xf4]);
        });
        attempt("64-bit IDT + int 0x30", |sp, st| {
            pm(st);
            sp.ram.write_bytes(0x10000, &(0x11003u64).to_le_bytes());
            sp.ram.write_bytes(0x11000, &(0x12003u64).to_le_bytes());
            sp.ram.write_bytes(0x12000, &(0x83u64).to_le_bytes());
            st.cr3 = 0x10000;
            st.cr4 = 1 << 5;
            st.efer = crate::cpu::efer::LME | crate::cpu::efer::LMA;
            st.cr0 |= cr0::PG;
            st.seg[CS] = Segment {
                selector: 0x18,
                base: 0,
                limit: 0xffff_ffff,
                attr: attr::P | attr::S | attr::L | attr::G | 0xb,
            };
            let gate: u64 = 0x1100 | (0x18 << 16) | (0x8e00u64 << 32);
            sp.ram.write_bytes(0x2000 + 0x30 * 16, &gate.to_le_bytes());
            st.idtr = DescriptorTable {
                base: 0x2000,
                limit: 0xfff,
            };
            sp.ram
                .write_bytes(0x1100, &[0xb0, 0x17, 0xe6, 0x80, 0x48, 0xcf]);
            sp.ram
                .write_bytes(0x1000, &[0xcd, 0x30, 0xb0, 0x18, 0xe6, 0x80, 0xf4]);
        });
    }
}
