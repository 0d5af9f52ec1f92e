/*
 * longmode: from the 32-bit multiboot entry, enables PAE, 4-level paging,
 * EFER.LME (with NXE and SCE) and paging (compatibility mode), then jumps to
 * 64-bit code and checks:
 *   - #PF error codes and CR2: not-present read/write, write to read-only
 *     with CR0.WP, instruction fetch from an NX page (and execution from the
 *     same frame mapped without NX), a higher-half alias; #GP for a
 *     non-canonical address; #UD, #DE;
 *   - IST: INT 2 through a gate with IST1, #DF (from #DE whose gate is not
 *     present) through IST2, and the 16-byte stack alignment of a gate
 *     without IST;
 *   - SWAPGS and KERNEL_GS_BASE;
 *   - IRETQ to ring 3, SYSCALL/SYSRET (STAR, LSTAR, FMASK) from ring 3, user
 *     #PF (supervisor page, read-only page, NX page), #GP for MOV from CR3;
 *   - x87 (FSQRT, FLDPI, FIDIV, FISTP rounding, FCOMI, control word) and SSE2
 *     (ADDPD, CVTSI2SD, SQRTSD, MULSD, CVTTSD2SI, CVTSD2SI, PSHUFD, PADDD,
 *     UCOMISD, MXCSR) with known bit patterns;
 *   - CPUID (vendor, FPU/SSE/SSE2/FXSR, LM/NX/SYSCALL) and RDTSC monotonic.
 * Exits with 33 only if every check passed.
 */
#include "lib32.S"
#include "lib64.S"

#define SEL_KCODE64     0x08
#define SEL_KDATA       0x10
#define SEL_UCODE32     0x1b
#define SEL_UDATA       0x23
#define SEL_UCODE64     0x2b
#define SEL_TSS         0x30
#define SEL_KCODE32     0x40

#define MSR_EFER        0xc0000080
#define MSR_STAR        0xc0000081
#define MSR_LSTAR       0xc0000082
#define MSR_FMASK       0xc0000084
#define MSR_GS_BASE     0xc0000101
#define MSR_KGS_BASE    0xc0000102

#define VA_NP           0x400000        /* not present */
#define VA_RO           0x401000        /* read-only, user */
#define VA_SUP          0x402000        /* supervisor */
#define VA_NX           0x403000        /* code frame, NX */
#define VA_X            0x404000        /* same frame, executable */
#define VA_RW           0x405000        /* read-write, user */

#define USER_RFLAGS     0x3002          /* IOPL 3: ring 3 may print */

.macro EXPECT64 resume
        movq $\resume, resume_rip
        movq $-1, exc_vec
        movq $-1, exc_err
        movq $0, exc_cr2
.endm

.macro CHECK_EXC64 name, vec, err
        CHECK64 "\name vector", exc_vec, $\vec
        CHECK64 "\name error code", exc_err, $\err
.endm

        .globl _start
        .code32
_start:
        cli
        ZERO_BSS
        mov $stack_top, %esp
        call serial_init
        PUTS "longmode: start\n"

        mov $0x80000000, %eax
        cpuid
        cmp $0x80000001, %eax
        jb no_long_mode
        mov $0x80000001, %eax
        cpuid
        bt $29, %edx
        jnc no_long_mode

        lgdt gdtr
        ljmp $SEL_KCODE32, $1f
1:      mov $SEL_KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        xor %ax, %ax
        mov %ax, %fs
        mov %ax, %gs

        /* 4-level tables: 0-8 MiB identity (2 MiB pages, test pages at
         * 4 MiB), and the same directory again at -2 GiB. */
        movl $pdpt_lo + 7, pml4
        movl $pdpt_hi + 7, pml4 + 511 * 8
        movl $pd + 7, pdpt_lo
        movl $pd + 7, pdpt_hi + 510 * 8
        movl $0x000087, pd
        movl $0x200087, pd + 8
        movl $pt_test + 7, pd + 16
        movl $0x600087, pd + 24
        movl $tpage_ro + 5, pt_test + 8
        movl $tpage_sup + 3, pt_test + 16
        movl $tpage_code + 7, pt_test + 24
        movl $0x80000000, pt_test + 28          /* NX */
        movl $tpage_code + 7, pt_test + 32
        movl $tpage_rw + 7, pt_test + 40
        /* The code frame: mov $0x5a, %eax; ret */
        movl $0x00005ab8, tpage_code
        movl $0xc3000000, tpage_code + 4

        mov %cr4, %eax
        or $0x20, %eax                          /* PAE */
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $MSR_EFER, %ecx
        rdmsr
        or $0x901, %eax                         /* NXE | LME | SCE */
        wrmsr
        mov %cr0, %eax
        or $0x80010000, %eax                    /* PG | WP */
        mov %eax, %cr0
        jmp 1f
1:
        /* Compatibility mode: still this 32-bit code segment. */
        mov $MSR_EFER, %ecx
        rdmsr
        and $0x400, %eax
        CHECK "compat mode: efer.lma", %eax, $0x400
        ljmp $SEL_KCODE64, $long_entry

no_long_mode:
        PUTS "FAIL cpuid: no long mode\n"
        mov $EXIT_FAIL, %al
        jmp exit

/* ---------------------------------------------------------------------- */
        .code64
long_entry:
        mov $SEL_KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $stack_top, %esp
        PUTS64 "64-bit mode\n"
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK64 "64-bit cs", %rax, $SEL_KCODE64
        movabs $0x123456789abcdef0, %rax
        ror $16, %rax
        movabs $0xdef0123456789abc, %rdx
        CHECK64 "64-bit registers", %rax, %rdx

        call setup_idt64
        lidt idtr
        call setup_tss64
        mov $SEL_TSS, %ax
        ltr %ax

        /* An unexpected exception at the top level of a ring-0 test
         * function is reported and resumes at `test_abort`, which returns
         * from that function: one missing feature fails its group only. */
        movq $test_abort, fallback_rip
        call test_pf64
        call test_ist
        call test_swapgs
        call test_syscall_setup
        PUTS64 "ring 3\n"
        movq $0, fallback_rip
        mov $user64, %eax
        call enter_user64
        PUTS64 "back in ring 0\n"
        movq $test_abort, fallback_rip
        call test_fpu_setup
        call test_x87
        call test_sse2
        call test_cpuid
        call test_rdtsc
        jmp finish64

test_abort:
        ret

/* ---------------------------------------------------------------------- */
test_pf64:
        PUTS64 "page faults\n"
        EXPECT64 1f
        mov VA_NP + 0xabc, %rax
1:      CHECK_EXC64 "pf64 not-present read", 14, 0
        CHECK64 "pf64 not-present read cr2", exc_cr2, $(VA_NP+0xabc)
        EXPECT64 1f
        movq $1, VA_NP + 0x10
1:      CHECK_EXC64 "pf64 not-present write", 14, 2
        CHECK64 "pf64 not-present write cr2", exc_cr2, $(VA_NP+0x10)
        EXPECT64 1f
        movq $1, VA_RO + 0x18
1:      CHECK_EXC64 "pf64 write to read-only with wp", 14, 3
        CHECK64 "pf64 write to read-only cr2", exc_cr2, $(VA_RO+0x18)

        /* Fetch from the NX alias faults; the executable alias runs. */
        mov %rsp, saved_rsp
        EXPECT64 1f
        mov $VA_NX, %eax
        call *%rax
1:      mov saved_rsp, %rsp
        CHECK_EXC64 "pf64 fetch from nx page", 14, 0x11
        CHECK64 "pf64 fetch from nx page cr2", exc_cr2, $VA_NX
        movq $0, resume_rip
        xor %eax, %eax
        mov $VA_X, %ecx
        call *%rcx
        CHECK64 "pf64 same frame executes without nx", %rax, $0x5a

        mov $mb_header, %ebx
        movabs $0xffffffff80000000, %rax
        add %rax, %rbx
        mov (%rbx), %eax
        CHECK64 "higher-half alias", %rax, $MB_MAGIC

        EXPECT64 1f
        movabs $0x0000800000000000, %rbx
        mov (%rbx), %rax
1:      CHECK_EXC64 "non-canonical address #GP", 13, 0

        EXPECT64 1f
.Lud64:
        ud2
1:      CHECK_EXC64 "UD in 64-bit mode", 6, 0
        CHECK64 "UD rip", exc_rip, $.Lud64
        EXPECT64 1f
        xor %ecx, %ecx
        mov $1, %eax
        xor %edx, %edx
        div %rcx
1:      CHECK_EXC64 "DE in 64-bit mode", 0, 0
        ret

/* ---------------------------------------------------------------------- */
test_ist:
        PUTS64 "interrupt stacks\n"
        mov %rsp, %rbx
        int $2
        CHECK64 "int 2 through ist1: handler rsp", ist_rsp, $(ist1_top-40)
        CHECK64 "int 2 through ist1: saved rsp", ist_saved_rsp, %rbx
        mov %rsp, %rcx
        CHECK64 "int 2 returns to the same stack", %rcx, %rbx

        /* Without IST the CPU aligns RSP to 16 bytes before pushing. */
        mov %rsp, %rbx
        sub $8, %rsp
        mov %rsp, %rcx
        and $~0xf, %rcx
        sub $40, %rcx
        int $0x40
        add $8, %rsp
        CHECK64 "int without ist aligns the stack", ist_rsp, %rcx

        /* #DE with its gate not present: #NP, then #DF through IST2. */
        andb $0x7f, idt + 5
        mov %rsp, saved_rsp
        movq $1f, df_resume
        xor %ecx, %ecx
        mov $1, %eax
        xor %edx, %edx
        div %ecx
        PUTS64 "FAIL double fault: div returned\n"
        incl checks_failed
1:      mov saved_rsp, %rsp
        orb $0x80, idt + 5
        CHECK64 "df through ist2: handler ran", df_count, $1
        CHECK64 "df through ist2: handler rsp", df_rsp, $(ist2_top-48)
        CHECK64 "df error code", df_err, $0
        ret

nmi_handler:                            /* vector 2, IST1 */
        mov %rsp, ist_rsp
        push %rax
        mov 32(%rsp), %rax
        mov %rax, ist_saved_rsp
        pop %rax
        iretq

align_handler:                          /* vector 0x40, no IST */
        mov %rsp, ist_rsp
        iretq

df_handler:                             /* vector 8, IST2 */
        mov %rsp, df_rsp
        push %rax
        mov 8(%rsp), %rax
        mov %rax, df_err
        incq df_count
        mov df_resume, %rax
        mov %rax, 16(%rsp)
        pop %rax
        add $8, %rsp
        iretq

/* ---------------------------------------------------------------------- */
test_swapgs:
        PUTS64 "swapgs\n"
        movabs $0x4b45524e454c4753, %rax        /* "SGLENREK" */
        mov %rax, kernel_percpu + 8
        movabs $0x5553455247535553, %rax
        mov %rax, user_gs_area + 8
        mov $MSR_GS_BASE, %ecx
        mov $kernel_percpu, %eax
        xor %edx, %edx
        wrmsr
        mov $MSR_KGS_BASE, %ecx
        mov $user_gs_area, %eax
        wrmsr
        mov %gs:8, %rax
        CHECK64 "gs base from msr", %rax, kernel_percpu + 8
        swapgs
        mov %gs:8, %rax
        CHECK64 "swapgs exchanges gs base", %rax, user_gs_area + 8
        mov $MSR_KGS_BASE, %ecx
        rdmsr
        CHECK64 "swapgs: kernel_gs_base now the old base", %rax, $kernel_percpu
        mov $MSR_GS_BASE, %ecx
        rdmsr
        CHECK64 "swapgs: gs_base msr", %rax, $user_gs_area
        swapgs
        mov %gs:8, %rax
        CHECK64 "swapgs twice restores", %rax, kernel_percpu + 8
        ret

/* ---------------------------------------------------------------------- */
test_syscall_setup:
        movq $syscall_stack_top, kernel_percpu
        mov $MSR_STAR, %ecx
        xor %eax, %eax
        mov $0x00180008, %edx                   /* sysret base 0x18, syscall cs 0x08 */
        wrmsr
        mov $MSR_LSTAR, %ecx
        mov $syscall_entry, %eax
        xor %edx, %edx
        wrmsr
        mov $MSR_FMASK, %ecx
        mov $0x600, %eax                        /* clear IF and DF */
        wrmsr
        ret

/* EAX = ring-3 entry; returns when ring 3 does INT 0x81. */
enter_user64:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        mov %rsp, saved_krsp
        swapgs                                  /* user GS base */
        pushq $SEL_UDATA
        pushq $ustack_top
        pushq $USER_RFLAGS
        pushq $SEL_UCODE64
        push %rax
        iretq

user_exit:                                      /* INT 0x81, DPL 3 */
        swapgs
        mov saved_krsp, %rsp
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

syscall_entry:
        swapgs
        mov %rsp, %gs:16
        mov %gs:0, %rsp
        mov %rcx, sc_rcx
        mov %r11, sc_r11
        pushfq
        popq sc_flags
        mov %cs, %eax
        movzwl %ax, %eax
        mov %rax, sc_cs
        mov %ss, %eax
        movzwl %ax, %eax
        mov %rax, sc_ss
        mov %gs:8, %rax
        mov %rax, sc_gs_magic
        mov %gs:16, %rax
        mov %rax, sc_user_rsp
        lea 1(%rdi), %rax
        mov %gs:16, %rsp
        swapgs
        sysretq

/* Ring 3 (IOPL 3 so that it can print). */
user64:
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK64 "iretq to ring 3: cs", %rax, $SEL_UCODE64
        mov %ss, %eax
        movzwl %ax, %eax
        CHECK64 "iretq to ring 3: ss", %rax, $SEL_UDATA
        mov %rsp, %rax
        CHECK64 "iretq to ring 3: rsp", %rax, $ustack_top
        mov %gs:8, %rax
        CHECK64 "ring 3 sees the user gs base", %rax, user_gs_area + 8

        mov $41, %edi
        mov %rsp, %r12
        std
        syscall
.Lsc_ret:
        pushfq
        cld
        pop %r13
        CHECK64 "syscall result", %rax, $42
        CHECK64 "syscall rcx is the return rip", sc_rcx, $.Lsc_ret
        mov sc_r11, %rax
        and $0x3600, %eax
        CHECK64 "syscall r11 is the user rflags", %rax, $0x3400
        mov sc_flags, %rax
        and $0x600, %eax
        CHECK64 "syscall fmask clears IF and DF", %rax, $0
        CHECK64 "syscall cs", sc_cs, $SEL_KCODE64
        CHECK64 "syscall ss", sc_ss, $SEL_KDATA
        CHECK64 "syscall swapgs gives the kernel gs", sc_gs_magic, kernel_percpu + 8
        CHECK64 "syscall keeps the user rsp", sc_user_rsp, %r12
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK64 "sysret cs", %rax, $SEL_UCODE64
        mov %ss, %eax
        movzwl %ax, %eax
        CHECK64 "sysret ss", %rax, $SEL_UDATA
        and $0x400, %r13d
        CHECK64 "sysret restores rflags from r11", %r13, $0x400
        mov %gs:8, %rax
        CHECK64 "sysret: user gs base again", %rax, user_gs_area + 8

        EXPECT64 1f
        mov VA_SUP + 0x20, %rax
1:      CHECK_EXC64 "pf64 user read of supervisor page", 14, 5
        CHECK64 "pf64 user read of supervisor page cr2", exc_cr2, $(VA_SUP+0x20)
        CHECK64 "pf64 fault returns to ring 3", exc_cs, $SEL_UCODE64
        EXPECT64 1f
        movq $1, VA_RO
1:      CHECK_EXC64 "pf64 user write to read-only page", 14, 7
        mov %rsp, %r12
        EXPECT64 1f
        mov $VA_NX, %eax
        call *%rax
1:      mov %r12, %rsp
        CHECK_EXC64 "pf64 user fetch from nx page", 14, 0x15
        movq $0, resume_rip
        mov $VA_X, %eax
        call *%rax
        CHECK64 "user code in a user page runs", %rax, $0x5a
        movq $0x77, VA_RW + 8
        CHECK64 "user write to user page", tpage_rw + 8, $0x77
        EXPECT64 1f
        mov %cr3, %rax
1:      CHECK_EXC64 "GP mov from cr3 in ring 3", 13, 0
        int $0x81

/* ---------------------------------------------------------------------- */
test_fpu_setup:
        mov %cr0, %rax
        and $~0x4, %rax                         /* EM off */
        or $0x22, %rax                          /* MP, NE */
        mov %rax, %cr0
        mov %cr4, %rax
        or $0x600, %rax                         /* OSFXSR, OSXMMEXCPT */
        mov %rax, %cr4
        ret

test_x87:
        PUTS64 "x87\n"
        fninit
        fnstcw fpu_word
        movzwl fpu_word, %eax
        CHECK64 "x87 fninit control word", %rax, $0x37f

        fld1
        fld1
        faddp
        fsqrt
        fstpl f_res
        movabs $0x3ff6a09e667f3bcd, %rdx
        CHECK64 "x87 fsqrt(2.0)", f_res, %rdx
        fldpi
        fstpl f_res
        movabs $0x400921fb54442d18, %rdx
        CHECK64 "x87 fldpi", f_res, %rdx
        fildl int7
        fidivl int2
        fstpl f_res
        movabs $0x400c000000000000, %rdx
        CHECK64 "x87 fild/fidiv 7/2", f_res, %rdx
        fldl d2_5
        fistpl i_res
        CHECK64 "x87 fistp 2.5 rounds to even", i_res, $2
        fldl d2_0
        fld1
        fcomip %st(1), %st
        setb %al
        fstp %st(0)
        movzbl %al, %eax
        CHECK64 "x87 fcomip 1.0 < 2.0", %rax, $1
        fnstsw %ax
        and $0x3800, %eax
        CHECK64 "x87 stack empty again", %rax, $0
        ret

test_sse2:
        PUTS64 "SSE2\n"
        movapd v_a, %xmm0
        addpd v_b, %xmm0
        movapd %xmm0, v_res
        movabs $0x4000000000000000, %rdx
        CHECK64 "sse2 addpd low", v_res, %rdx
        movabs $0x4008000000000000, %rdx
        CHECK64 "sse2 addpd high", v_res + 8, %rdx
        mov $12345, %eax
        cvtsi2sd %eax, %xmm1
        movq %xmm1, %rax
        movabs $0x40c81c8000000000, %rdx
        CHECK64 "sse2 cvtsi2sd 12345", %rax, %rdx
        movsd d2_0, %xmm2
        sqrtsd %xmm2, %xmm2
        movq %xmm2, %rax
        movabs $0x3ff6a09e667f3bcd, %rdx
        CHECK64 "sse2 sqrtsd(2.0)", %rax, %rdx
        movsd d1_5, %xmm3
        mulsd d4_0, %xmm3
        movq %xmm3, %rax
        movabs $0x4018000000000000, %rdx
        CHECK64 "sse2 mulsd 1.5*4", %rax, %rdx
        cvttsd2si d3_99, %eax
        CHECK64 "sse2 cvttsd2si 3.99", %rax, $3
        cvtsd2si d2_5, %eax
        CHECK64 "sse2 cvtsd2si 2.5 rounds to even", %rax, $2
        movdqa ints, %xmm4
        pshufd $0x1b, %xmm4, %xmm5
        movq %xmm5, %rax
        movabs $0x0000000300000004, %rdx
        CHECK64 "sse2 pshufd", %rax, %rdx
        paddd %xmm4, %xmm4
        pextrw $6, %xmm4, %eax
        CHECK64 "sse2 paddd", %rax, $8
        movsd d1_0, %xmm6
        ucomisd d2_0, %xmm6
        setb %al
        movzbl %al, %eax
        CHECK64 "sse2 ucomisd 1.0 < 2.0", %rax, $1
        stmxcsr fpu_word
        mov fpu_word, %eax
        /* Default masks; of the flags only inexact (sqrt 2, 2.5 -> 2). */
        CHECK64 "sse mxcsr after inexact operations", %rax, $0x1fa0
        ret

/* ---------------------------------------------------------------------- */
test_cpuid:
        PUTS64 "cpuid\n"
        xor %eax, %eax
        cpuid
        mov %ebx, vendor
        mov %edx, vendor + 4
        mov %ecx, vendor + 8
        movb $0, vendor + 12
        PUTS64 "cpuid vendor '"
        mov $vendor, %esi
        call puts64
        PUTS64 "'\n"
        mov $1, %eax
        cpuid
        mov %edx, %eax
        and $0x07000001, %eax                   /* FPU, FXSR, SSE, SSE2 */
        CHECK64 "cpuid fpu fxsr sse sse2", %rax, $0x07000001
        mov $0x80000001, %eax
        cpuid
        mov %edx, %eax
        and $0x20100800, %eax                   /* SYSCALL, NX, LM */
        CHECK64 "cpuid syscall nx lm", %rax, $0x20100800
        ret

test_rdtsc:
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, %r8
        mov $10000, %ecx
1:      dec %ecx
        jnz 1b
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        cmp %r8, %rax
        seta %al
        movzbl %al, %eax
        CHECK64 "rdtsc increases", %rax, $1
        ret

/* ---------------------------------------------------------------------- */
/* Exception stubs, 16 bytes each: vector v at exc_stubs + 16 * v. */
        .align 16
exc_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .align 16
  .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
  .else
        pushq $0
  .endif
        pushq $\v
        jmp exc_common64
.endr

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
exc_common64:
        push %rax
        mov 8(%rsp), %rax
        mov %rax, exc_vec
        mov 16(%rsp), %rax
        mov %rax, exc_err
        mov 24(%rsp), %rax
        mov %rax, exc_rip
        mov 32(%rsp), %rax
        mov %rax, exc_cs
        mov %cr2, %rax
        mov %rax, exc_cr2
        mov resume_rip, %rax
        test %rax, %rax
        jz 1f
        mov %rax, 24(%rsp)
        movq $0, resume_rip
        pop %rax
        add $16, %rsp
        iretq
1:      PUTS64 "FAIL unexpected exception: vector "
        mov exc_vec, %rax
        call puthex64
        PUTS64 " error "
        mov exc_err, %rax
        call puthex64
        PUTS64 " rip "
        mov exc_rip, %rax
        call puthex64
        PUTS64 " cs "
        mov exc_cs, %rax
        call puthex64
        PUTS64 " cr2 "
        mov exc_cr2, %rax
        call puthex64
        call putnl64
        incl checks_failed
        mov fallback_rip, %rax
        test %rax, %rax
        jz 2f
        testb $3, 32(%rsp)                      /* only from ring 0 */
        jnz 2f
        mov %rax, 24(%rsp)
        pop %rax
        add $16, %rsp
        iretq
2:      mov $EXIT_CRASH, %al
        jmp exit64

/* RDI = gate, EAX = handler, DL = type/attribute, BL = IST. */
make_gate64:
        mov %ax, (%rdi)
        movw $SEL_KCODE64, 2(%rdi)
        mov %bl, 4(%rdi)
        mov %dl, 5(%rdi)
        push %rax
        shr $16, %eax
        mov %ax, 6(%rdi)
        pop %rax
        movq $0, 8(%rdi)
        ret

setup_idt64:
        xor %ecx, %ecx
        xor %ebx, %ebx
1:      mov %ecx, %eax
        shl $4, %eax
        add $exc_stubs, %eax
        mov %ecx, %edi
        shl $4, %edi
        add $idt, %edi
        mov $0x8e, %dl
        call make_gate64
        inc %ecx
        cmp $32, %ecx
        jb 1b
        mov $idt + 2 * 16, %edi
        mov $nmi_handler, %eax
        mov $1, %bl
        call make_gate64
        mov $idt + 8 * 16, %edi
        mov $df_handler, %eax
        mov $2, %bl
        call make_gate64
        xor %ebx, %ebx
        mov $idt + 0x40 * 16, %edi
        mov $align_handler, %eax
        call make_gate64
        mov $idt + 0x81 * 16, %edi
        mov $user_exit, %eax
        mov $0xee, %dl
        call make_gate64
        ret

setup_tss64:
        movl $kstack0_top, tss64 + 4            /* RSP0 */
        movl $ist1_top, tss64 + 0x24            /* IST1 */
        movl $ist2_top, tss64 + 0x2c            /* IST2 */
        movw $104, tss64 + 0x66
        mov $tss64, %eax
        movw $103, gdt + SEL_TSS
        mov %ax, gdt + SEL_TSS + 2
        shr $16, %eax
        mov %al, gdt + SEL_TSS + 4
        movb $0x89, gdt + SEL_TSS + 5
        movb $0, gdt + SEL_TSS + 6
        mov %ah, gdt + SEL_TSS + 7
        movq $0, gdt + SEL_TSS + 8
        ret

        .code32

/* ---------------------------------------------------------------------- */
        .data
        .align 16
gdt:
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00cffa000000ffff        /* 0x18 user code, 32-bit */
        .quad 0x00cff2000000ffff        /* 0x20 user data */
        .quad 0x00affa000000ffff        /* 0x28 user code, 64-bit */
        .quad 0, 0                      /* 0x30 TSS (16 bytes) */
        .quad 0x00cf9a000000ffff        /* 0x40 kernel code, 32-bit */
gdt_end:
        .align 4
        .word 0
gdtr:   .word gdt_end - gdt - 1
        .long gdt
        .word 0
        .word 0
        .word 0
idtr:   .word 256 * 16 - 1
        .long idt
        .long 0

        .align 16
v_a:    .double 1.5, 2.25
v_b:    .double 0.5, 0.75
ints:   .long 1, 2, 3, 4
d1_0:   .double 1.0
d1_5:   .double 1.5
d2_0:   .double 2.0
d2_5:   .double 2.5
d3_99:  .double 3.99
d4_0:   .double 4.0
int7:   .long 7
int2:   .long 2

        .bss
        .align 4096
pml4:           .space 4096
pdpt_lo:        .space 4096
pdpt_hi:        .space 4096
pd:             .space 4096
pt_test:        .space 4096
tpage_ro:       .space 4096
tpage_sup:      .space 4096
tpage_code:     .space 4096
tpage_rw:       .space 4096
idt:            .space 256 * 16
        .align 16
tss64:          .space 104
        .align 16
v_res:          .space 16
kernel_percpu:  .space 64
user_gs_area:   .space 64
vendor:         .space 16
        .align 8
resume_rip:     .quad 0
fallback_rip:   .quad 0
exc_vec:        .quad 0
exc_err:        .quad 0
exc_rip:        .quad 0
exc_cs:         .quad 0
exc_cr2:        .quad 0
saved_rsp:      .quad 0
saved_krsp:     .quad 0
ist_rsp:        .quad 0
ist_saved_rsp:  .quad 0
df_rsp:         .quad 0
df_err:         .quad 0
df_count:       .quad 0
df_resume:      .quad 0
sc_rcx:         .quad 0
sc_r11:         .quad 0
sc_flags:       .quad 0
sc_cs:          .quad 0
sc_ss:          .quad 0
sc_gs_magic:    .quad 0
sc_user_rsp:    .quad 0
f_res:          .quad 0
i_res:          .quad 0
fpu_word:       .quad 0
        .align 16
        .space 8192
stack_top:
        .space 4096
kstack0_top:
        .space 4096
ist1_top:
        .space 4096
ist2_top:
        .space 4096
syscall_stack_top:
        .space 4096
ustack_top:
