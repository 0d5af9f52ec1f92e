/*
 * protected: 32-bit protected-mode system programming. Sets up its own GDT,
 * IDT and TSSs, then checks:
 *   - exceptions and their error codes: #DE, #UD, #BP, #GP (selector beyond
 *     the GDT, system selector in DS, SS with the wrong RPL), #NP
 *     (not-present data segment);
 *   - 32-bit paging: #PF for not-present read/write, write to a read-only
 *     page with CR0.WP (and success with WP clear), CR2, accessed/dirty
 *     bits, a 4 MiB PSE page;
 *   - ring 3 (IRET to CPL 3, TSS ESP0): INT 0x80 through a DPL-3 trap gate,
 *     a far CALL through a call gate with a parameter and RETF back,
 *     SYSENTER/SYSEXIT, #PF for a user access to a supervisor page and a
 *     user write to a read-only page, #GP for INT to a DPL-0 gate and HLT;
 *   - #DF (from #DE whose gate is not present) delivered through a task gate:
 *     a hardware task switch and an IRET back through the back link;
 *   - PAE paging: not-present, read-only with WP, a reserved bit (XD with
 *     EFER.NXE clear), a 2 MiB page, user access to a supervisor page.
 * Prints "ok NAME" or "FAIL NAME got X expected Y" per check and exits with
 * 33 only if all passed.
 */
#include "lib32.S"

#define SEL_KCODE       0x08
#define SEL_KDATA       0x10
#define SEL_UCODE       0x1b            /* 0x18 | RPL 3 */
#define SEL_UDATA       0x23            /* 0x20 | RPL 3 */
#define SEL_TSS         0x28
#define SEL_DFTSS       0x30
#define SEL_CALLGATE    0x3b            /* 0x38 | RPL 3 */
#define SEL_NOTPRESENT  0x40

#define USER_EFLAGS     0x3002          /* IOPL 3: ring 3 may print */

#define VA_NP           0x400000        /* not present */
#define VA_RO           0x401000        /* read-only, user */
#define VA_SUP          0x402000        /* read-write, supervisor */
#define VA_RW           0x403000        /* read-write, user */
#define VA_RSVD         0x404000        /* PAE: reserved bit set */
#define VA_BIG          0x800000        /* 32-bit: 4 MiB page -> 0 */
#define VA_BIG_PAE      0x600000        /* PAE: 2 MiB page -> 0 */

/* Expect a fault: the handler resumes at `resume`. */
.macro EXPECT resume
        movl $\resume, resume_eip
        movl $0xffffffff, exc_vec
        movl $0xffffffff, exc_err
        movl $0, exc_cr2
.endm

/* Checks the last exception's vector and error code. */
.macro CHECK_EXC name, vec, err
        CHECK "\name vector", exc_vec, $\vec
        CHECK "\name error code", exc_err, $\err
.endm

        .globl _start
_start:
        cli
        ZERO_BSS
        mov $stack_top, %esp
        call serial_init
        PUTS "protected: start\n"

        call setup_gdt
        lgdt gdtr
        ljmp $SEL_KCODE, $1f
1:      mov $SEL_KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        call setup_idt
        lidt idtr
        call setup_tss
        mov $SEL_TSS, %ax
        ltr %ax
        str %ax
        movzwl %ax, %eax
        CHECK "ltr/str", %eax, $SEL_TSS

        /* SYSENTER target. */
        mov $0x174, %ecx
        mov $SEL_KCODE, %eax
        xor %edx, %edx
        wrmsr
        mov $0x175, %ecx
        mov $se_stack_top, %eax
        wrmsr
        mov $0x176, %ecx
        mov $sysenter_entry, %eax
        wrmsr

        call test_exceptions
        call test_paging32
        PUTS "ring 3 (32-bit paging)\n"
        mov $user_main, %eax
        call enter_user
        PUTS "back in ring 0\n"
        call test_double_fault
        call test_pae
        PUTS "ring 3 (PAE paging)\n"
        mov $user_pae, %eax
        call enter_user
        PUTS "back in ring 0\n"
        call finish

/* ---------------------------------------------------------------------- */
test_exceptions:
        PUTS "exceptions\n"
        EXPECT 1f
        mov $1, %eax
        xor %edx, %edx
        xor %ecx, %ecx
.Lde_insn:
        div %ecx
        jmp 2f
1:      CHECK "DE vector", exc_vec, $0
        CHECK "DE eip is the faulting div", exc_eip, $.Lde_insn
2:
        EXPECT 1f
.Lud_insn:
        ud2
1:      CHECK "UD vector", exc_vec, $6
        CHECK "UD eip is the ud2", exc_eip, $.Lud_insn

        EXPECT 1f
        int3
.Lbp_next:
        nop
1:      CHECK "BP vector", exc_vec, $3
        CHECK "BP eip is after int3", exc_eip, $.Lbp_next

        EXPECT 1f
        mov $0x1000, %ax
        mov %ax, %ds
1:      CHECK_EXC "GP selector beyond gdt limit", 13, 0x1000

        EXPECT 1f
        mov $SEL_TSS, %ax
        mov %ax, %ds
1:      CHECK_EXC "GP tss selector into ds", 13, SEL_TSS

        EXPECT 1f
        mov $SEL_UDATA, %ax
        mov %ax, %ss
1:      CHECK_EXC "GP ss with rpl 3 at cpl 0", 13, 0x20

        EXPECT 1f
        mov $SEL_NOTPRESENT, %ax
        mov %ax, %ds
1:      CHECK_EXC "NP not-present data segment", 11, SEL_NOTPRESENT
        mov %ds, %eax
        movzwl %ax, %eax
        CHECK "ds unchanged after faults", %eax, $SEL_KDATA
        ret

/* ---------------------------------------------------------------------- */
test_paging32:
        PUTS "32-bit paging\n"
        /* Page directory: 0-4 MiB identity, test pages at 4 MiB, a 4 MiB
         * page at 8 MiB mapping physical 0. All user-accessible but one. */
        mov $pt_low, %edi
        mov $0x7, %eax
        mov $1024, %ecx
1:      mov %eax, (%edi)
        add $4096, %eax
        add $4, %edi
        loop 1b
        movl $pt_low + 7, pd32
        movl $pt_test + 7, pd32 + 4
        movl $0x87, pd32 + 8                    /* PS|US|RW|P -> phys 0 */
        movl $0, pt_test
        movl $tpage_ro + 5, pt_test + 4         /* US|P */
        movl $tpage_sup + 3, pt_test + 8        /* RW|P */
        movl $tpage_rw + 7, pt_test + 12        /* US|RW|P */

        mov %cr4, %eax
        or $0x10, %eax                          /* PSE */
        mov %eax, %cr4
        mov $pd32, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80010000, %eax                    /* PG | WP */
        mov %eax, %cr0
        jmp 1f
1:      CHECK "paging on: code still runs", $1, $1

        EXPECT 1f
        mov VA_NP + 0xabc, %eax
1:      CHECK_EXC "pf32 not-present read", 14, 0
        CHECK "pf32 not-present read cr2", exc_cr2, $(VA_NP+0xabc)

        EXPECT 1f
        movl $1, VA_NP + 0x123
1:      CHECK_EXC "pf32 not-present write", 14, 2
        CHECK "pf32 not-present write cr2", exc_cr2, $(VA_NP+0x123)

        movl $0x11223344, tpage_ro + 0x40
        mov VA_RO + 0x40, %eax
        CHECK "pf32 read-only page readable", %eax, $0x11223344
        EXPECT 1f
        movl $0x55, VA_RO + 0x40
1:      CHECK_EXC "pf32 write to read-only with wp", 14, 3
        CHECK "pf32 write to read-only cr2", exc_cr2, $(VA_RO+0x40)

        mov %cr0, %eax
        and $~0x10000, %eax
        mov %eax, %cr0
        movl $0, exc_count
        movl $0x66, VA_RO + 0x44
        mov tpage_ro + 0x44, %eax
        CHECK "pf32 wp=0 lets ring 0 write read-only", %eax, $0x66
        CHECK "pf32 wp=0 no fault", exc_count, $0
        mov %cr0, %eax
        or $0x10000, %eax
        mov %eax, %cr0

        mov pt_test + 12, %eax
        and $0x60, %eax
        CHECK "pf32 pte accessed/dirty clear", %eax, $0
        mov VA_RW + 0x10, %eax
        mov pt_test + 12, %eax
        and $0x60, %eax
        CHECK "pf32 read sets accessed", %eax, $0x20
        movl $0xfeedf00d, VA_RW + 0x10
        mov pt_test + 12, %eax
        and $0x60, %eax
        CHECK "pf32 write sets dirty", %eax, $0x60
        mov tpage_rw + 0x10, %eax
        CHECK "pf32 translation", %eax, $0xfeedf00d
        mov pd32 + 4, %eax
        and $0x20, %eax
        CHECK "pf32 pde accessed", %eax, $0x20

        mov VA_BIG + mb_header, %eax
        CHECK "pf32 4m page", %eax, $MB_MAGIC
        mov pd32 + 8, %eax
        and $0x60, %eax
        CHECK "pf32 4m page accessed, not dirty", %eax, $0x20
        ret

/* ---------------------------------------------------------------------- */
/* Ring 3, with IOPL 3 so that it can print. Ends with INT 0x81. */
user_main:
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK "ring3 iret to cpl 3 cs", %eax, $SEL_UCODE
        mov %ss, %eax
        movzwl %ax, %eax
        CHECK "ring3 ss", %eax, $SEL_UDATA

        /* INT 0x80 through a DPL-3 trap gate. */
        mov $41, %eax
        int $0x80
        CHECK "int80 result", %eax, $42
        CHECK "int80 handler cs", i80_cs, $SEL_KCODE
        CHECK "int80 handler stack is tss esp0", i80_esp, $(kstack0_top-20)
        CHECK "int80 frame user cs", i80_ret_cs, $SEL_UCODE
        CHECK "int80 frame user ss", i80_ss, $SEL_UDATA
        mov i80_eflags, %eax
        and $0x200, %eax
        CHECK "int80 trap gate: handler eflags.if as user", %eax, $0

        /* Far CALL through a call gate, one parameter, RETF 4 back. */
        mov %esp, u_esp_before
        pushl $0xcafe
        lcall $SEL_CALLGATE, $0
        mov %esp, u_esp_after
        CHECK "callgate result", %eax, $0x600d
        CHECK "callgate handler cs", cg_cs, $SEL_KCODE
        CHECK "callgate parameter copied", cg_param, $0xcafe
        CHECK "callgate return cs", cg_ret_cs, $SEL_UCODE
        CHECK "callgate stack is tss esp0", cg_esp, $(kstack0_top-20)
        mov u_esp_before, %eax
        sub $4, %eax
        CHECK "callgate saved user esp", cg_old_esp, %eax
        CHECK "callgate saved user ss", cg_old_ss, $SEL_UDATA
        CHECK "callgate retf 4 pops the parameter", u_esp_after, u_esp_before

        /* SYSENTER / SYSEXIT. */
        mov %esp, %ecx
        mov %esp, u_esp_before
        mov $.Lse_back, %edx
        sysenter
.Lse_back:
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK "sysexit cs", %eax, $SEL_UCODE
        mov %ss, %eax
        movzwl %ax, %eax
        CHECK "sysexit ss", %eax, $SEL_UDATA
        mov %esp, %ebx
        CHECK "sysexit esp from ecx", %ebx, u_esp_before
        CHECK "sysenter cs", se_cs, $SEL_KCODE
        CHECK "sysenter ss", se_ss, $SEL_KDATA
        CHECK "sysenter esp", se_esp, $se_stack_top

        /* Page faults from ring 3. */
        EXPECT 1f
        mov VA_SUP + 0x18, %eax
1:      CHECK_EXC "pf32 user read of supervisor page", 14, 5
        CHECK "pf32 user read of supervisor page cr2", exc_cr2, $(VA_SUP+0x18)
        CHECK "pf32 fault returns to ring 3", exc_cs, $SEL_UCODE
        EXPECT 1f
        movl $7, VA_RO + 0x20
1:      CHECK_EXC "pf32 user write to read-only page", 14, 7
        mov VA_RW + 0x10, %eax
        CHECK "pf32 user read of user page", %eax, $0xfeedf00d

        /* #GP from ring 3. */
        EXPECT 1f
        int $0x30
1:      CHECK_EXC "GP int to dpl 0 gate", 13, (0x30*8+2)
        EXPECT 1f
        hlt
1:      CHECK_EXC "GP hlt in ring 3", 13, 0
        int $0x81

user_pae:
        EXPECT 1f
        mov VA_SUP + 0x28, %eax
1:      CHECK_EXC "pae user read of supervisor page", 14, 5
        CHECK "pae user read of supervisor page cr2", exc_cr2, $(VA_SUP+0x28)
        EXPECT 1f
        movl $1, VA_BIG_PAE + 0x100
1:      movl $0, resume_eip
        CHECK "pae user write to 2m user page", exc_vec, $0xffffffff
        int $0x81

/* EAX = ring-3 entry point. Returns when ring 3 does INT 0x81. */
enter_user:
        pushal
        mov %esp, saved_kesp
        mov $SEL_UDATA, %cx
        mov %cx, %ds
        mov %cx, %es
        mov %cx, %fs
        mov %cx, %gs
        pushl $SEL_UDATA
        pushl $ustack_top
        pushl $USER_EFLAGS
        pushl $SEL_UCODE
        pushl %eax
        iret

user_exit:                              /* INT 0x81, DPL 3 */
        mov $SEL_KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov saved_kesp, %esp
        popal
        ret

int80_handler:                          /* trap gate, DPL 3 */
        push %eax
        mov %cs, %eax
        movzwl %ax, %eax
        mov %eax, i80_cs
        lea 4(%esp), %eax
        mov %eax, i80_esp
        mov 8(%esp), %eax
        mov %eax, i80_ret_cs
        mov 20(%esp), %eax
        mov %eax, i80_ss
        pushf
        pop %eax
        mov %eax, i80_eflags
        pop %eax
        inc %eax
        iret

callgate_handler:                       /* call gate, 1 parameter */
        mov %cs, %eax
        movzwl %ax, %eax
        mov %eax, cg_cs
        mov %esp, cg_esp
        mov 4(%esp), %eax
        mov %eax, cg_ret_cs
        mov 8(%esp), %eax
        mov %eax, cg_param
        mov 12(%esp), %eax
        mov %eax, cg_old_esp
        mov 16(%esp), %eax
        mov %eax, cg_old_ss
        mov $0x600d, %eax
        lret $4

sysenter_entry:
        mov %cs, %eax
        movzwl %ax, %eax
        mov %eax, se_cs
        mov %ss, %eax
        movzwl %ax, %eax
        mov %eax, se_ss
        mov %esp, se_esp
        sysexit

/* ---------------------------------------------------------------------- */
test_double_fault:
        PUTS "double fault through a task gate\n"
        mov %cr3, %eax
        mov %eax, main_tss + 0x1c
        mov %eax, df_tss + 0x1c
        andb $0x7f, idt + 5                     /* #DE gate not present */
        mov %esp, saved_esp_df
        mov $0x1234abcd, %ebx
        xor %ecx, %ecx
        mov $1, %eax
        xor %edx, %edx
.Ldf_div:
        div %ecx                                /* #DE -> #NP -> #DF */
        PUTS "FAIL double fault: div returned\n"
        incl checks_failed
df_resume:
        orb $0x80, idt + 5
        CHECK "df task ran once", df_count, $1
        CHECK "df error code on the task's stack", df_err, $0
        CHECK "df task stack", df_esp, $df_stack_top
        CHECK "df task tr", df_tr, $SEL_DFTSS
        CHECK "df back link", df_link, $SEL_TSS
        mov df_eflags, %eax
        and $0x4000, %eax
        CHECK "df task eflags.nt", %eax, $0x4000
        CHECK "df saved eip of the old task", df_main_eip, $.Ldf_div
        mov %esp, %ecx
        CHECK "df iret back restores esp", %ecx, saved_esp_df
        CHECK "df iret back restores ebx", %ebx, $0x1234abcd
        str %ax
        movzwl %ax, %eax
        CHECK "df iret back restores tr", %eax, $SEL_TSS
        movzbl gdt + SEL_DFTSS + 5, %eax
        CHECK "df tss no longer busy", %eax, $0x89
        movzbl gdt + SEL_TSS + 5, %eax
        CHECK "main tss busy", %eax, $0x8b
        pushf
        pop %eax
        and $0x4000, %eax
        CHECK "main task eflags.nt clear", %eax, $0
        ret

df_task:
        pop %eax
        mov %eax, df_err
        mov %esp, df_esp
        pushf
        pop %eax
        mov %eax, df_eflags
        movzwl df_tss, %eax
        mov %eax, df_link
        str %ax
        movzwl %ax, %eax
        mov %eax, df_tr
        mov main_tss + 0x20, %eax
        mov %eax, df_main_eip
        incl df_count
        movl $df_resume, main_tss + 0x20
        iret
        jmp df_task

/* ---------------------------------------------------------------------- */
test_pae:
        PUTS "PAE paging\n"
        mov %cr0, %eax
        and $~0x80000000, %eax
        mov %eax, %cr0
        movl $pae_pd + 1, pdpt
        movl $0x87, pae_pd                      /* 2 MiB: 0 */
        movl $0x200087, pae_pd + 8              /* 2 MiB: 2 MiB */
        movl $pae_pt + 7, pae_pd + 16           /* 4 MiB: test pages */
        movl $0x87, pae_pd + 24                 /* 6 MiB -> 0 */
        movl $tpage_ro + 5, pae_pt + 8
        movl $tpage_sup + 3, pae_pt + 16
        movl $tpage_rw + 7, pae_pt + 24
        movl $tpage_rw + 7, pae_pt + 32
        movl $0x80000000, pae_pt + 36           /* XD, reserved with NXE=0 */
        mov %cr4, %eax
        or $0x20, %eax                          /* PAE */
        mov %eax, %cr4
        mov $pdpt, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80010000, %eax
        mov %eax, %cr0
        jmp 1f
1:      CHECK "pae paging on", $1, $1

        EXPECT 1f
        mov VA_NP + 0x77c, %eax
1:      CHECK_EXC "pae not-present read", 14, 0
        CHECK "pae not-present read cr2", exc_cr2, $(VA_NP+0x77c)
        EXPECT 1f
        movl $2, VA_RO + 0x8
1:      CHECK_EXC "pae write to read-only with wp", 14, 3
        CHECK "pae write to read-only cr2", exc_cr2, $(VA_RO+0x8)
        EXPECT 1f
        mov VA_RSVD + 0x30, %eax
1:      CHECK "pae reserved bit vector", exc_vec, $14
        /* The SDM says P|RSVD (9); QEMU 7.2 reports RSVD alone (8). */
        mov exc_err, %eax
        or $1, %eax
        CHECK "pae reserved bit error code (rsvd)", %eax, $9
        CHECK "pae reserved bit cr2", exc_cr2, $(VA_RSVD+0x30)
        movl $0x5eed, VA_RW + 0x20
        mov tpage_rw + 0x20, %eax
        CHECK "pae translation", %eax, $0x5eed
        mov pae_pt + 24, %eax
        and $0x60, %eax
        CHECK "pae accessed/dirty", %eax, $0x60
        mov VA_BIG_PAE + mb_header, %eax
        CHECK "pae 2m page", %eax, $MB_MAGIC
        ret

/* ---------------------------------------------------------------------- */
/* Exception stubs: 16 bytes each, vector v at exc_stubs + 16 * v. */
        .align 16
exc_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .align 16
  .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
  .else
        pushl $0
  .endif
        pushl $\v
        jmp exc_common
.endr

/* Stack: vector, error code, EIP, CS, EFLAGS [, ESP, SS]. Records the
 * exception and resumes at resume_eip (in the interrupted ring). */
exc_common:
        push %eax
        mov 4(%esp), %eax
        mov %eax, exc_vec
        mov 8(%esp), %eax
        mov %eax, exc_err
        mov 12(%esp), %eax
        mov %eax, exc_eip
        mov 16(%esp), %eax
        mov %eax, exc_cs
        mov %cr2, %eax
        mov %eax, exc_cr2
        incl exc_count
        mov resume_eip, %eax
        test %eax, %eax
        jz 1f
        mov %eax, 12(%esp)
        movl $0, resume_eip
        pop %eax
        add $8, %esp
        iret
1:      PUTS "FAIL unexpected exception: vector "
        mov exc_vec, %eax
        call put0x
        PUTS " error "
        mov exc_err, %eax
        call put0x
        PUTS " eip "
        mov exc_eip, %eax
        call put0x
        PUTS " cs "
        mov exc_cs, %eax
        call put0x
        PUTS " cr2 "
        mov exc_cr2, %eax
        call put0x
        call putnl
        mov $EXIT_CRASH, %al
        jmp exit

/* ---------------------------------------------------------------------- */
/* EDI = descriptor, EAX = base; a 32-bit available TSS of 104 bytes. */
make_tss_desc:
        movw $103, (%edi)
        mov %ax, 2(%edi)
        push %eax
        shr $16, %eax
        mov %al, 4(%edi)
        movb $0x89, 5(%edi)
        movb $0, 6(%edi)
        mov %ah, 7(%edi)
        pop %eax
        ret

/* EDI = gate, EAX = offset, ECX = selector, EDX = type/attribute byte. */
make_gate:
        mov %ax, (%edi)
        mov %cx, 2(%edi)
        movb $0, 4(%edi)
        mov %dl, 5(%edi)
        push %eax
        shr $16, %eax
        mov %ax, 6(%edi)
        pop %eax
        ret

setup_gdt:
        mov $gdt + SEL_TSS, %edi
        mov $main_tss, %eax
        call make_tss_desc
        mov $gdt + SEL_DFTSS, %edi
        mov $df_tss, %eax
        call make_tss_desc
        mov $gdt + 0x38, %edi
        mov $callgate_handler, %eax
        mov $SEL_KCODE, %ecx
        mov $0xec, %edx                         /* P, DPL 3, 32-bit call gate */
        call make_gate
        movb $1, gdt + 0x38 + 4                 /* one dword parameter */
        ret

setup_idt:
        xor %ebx, %ebx
1:      mov %ebx, %eax
        shl $4, %eax
        add $exc_stubs, %eax
        lea idt(, %ebx, 8), %edi
        mov $SEL_KCODE, %ecx
        mov $0x8e, %edx                         /* interrupt gate, DPL 0 */
        call make_gate
        inc %ebx
        cmp $32, %ebx
        jb 1b
        /* #DF: task gate to the double-fault TSS. */
        lea idt + 8 * 8, %edi
        xor %eax, %eax
        mov $SEL_DFTSS, %ecx
        mov $0x85, %edx
        call make_gate
        lea idt + 0x80 * 8, %edi
        mov $int80_handler, %eax
        mov $SEL_KCODE, %ecx
        mov $0xef, %edx                         /* trap gate, DPL 3 */
        call make_gate
        lea idt + 0x81 * 8, %edi
        mov $user_exit, %eax
        mov $0xee, %edx                         /* interrupt gate, DPL 3 */
        call make_gate
        lea idt + 0x30 * 8, %edi
        mov $exc_stubs, %eax
        mov $0x8e, %edx                         /* DPL 0: ring 3 gets #GP */
        call make_gate
        ret

setup_tss:
        movl $kstack0_top, main_tss + 4
        movl $SEL_KDATA, main_tss + 8
        movw $104, main_tss + 0x66
        movl $kstack0_top, df_tss + 4
        movl $SEL_KDATA, df_tss + 8
        movl $df_task, df_tss + 0x20
        movl $2, df_tss + 0x24
        movl $df_stack_top, df_tss + 0x38
        movl $SEL_KDATA, df_tss + 0x48
        movl $SEL_KCODE, df_tss + 0x4c
        movl $SEL_KDATA, df_tss + 0x50
        movl $SEL_KDATA, df_tss + 0x54
        movl $SEL_KDATA, df_tss + 0x58
        movl $SEL_KDATA, df_tss + 0x5c
        movw $104, df_tss + 0x66
        ret

/* ---------------------------------------------------------------------- */
        .data
        .align 8
gdt:
        .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08 kernel code */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00cffa000000ffff        /* 0x18 user code */
        .quad 0x00cff2000000ffff        /* 0x20 user data */
        .quad 0                         /* 0x28 TSS */
        .quad 0                         /* 0x30 double-fault TSS */
        .quad 0                         /* 0x38 call gate */
        .quad 0x00cf12000000ffff        /* 0x40 data, not present */
gdt_end:
        .align 4
        .word 0
gdtr:   .word gdt_end - gdt - 1
        .long gdt
        .word 0
idtr:   .word 256 * 8 - 1
        .long idt

        .bss
        .align 4096
pd32:           .space 4096
pt_low:         .space 4096
pt_test:        .space 4096
pae_pd:         .space 4096
pae_pt:         .space 4096
tpage_ro:       .space 4096
tpage_sup:      .space 4096
tpage_rw:       .space 4096
idt:            .space 256 * 8
        .align 32
pdpt:           .space 32
main_tss:       .space 104
        .align 16
df_tss:         .space 104
        .align 4
resume_eip:     .long 0
exc_vec:        .long 0
exc_err:        .long 0
exc_eip:        .long 0
exc_cs:         .long 0
exc_cr2:        .long 0
exc_count:      .long 0
saved_kesp:     .long 0
saved_esp_df:   .long 0
i80_cs:         .long 0
i80_esp:        .long 0
i80_ret_cs:     .long 0
i80_ss:         .long 0
i80_eflags:     .long 0
cg_cs:          .long 0
cg_esp:         .long 0
cg_ret_cs:      .long 0
cg_param:       .long 0
cg_old_esp:     .long 0
cg_old_ss:      .long 0
se_cs:          .long 0
se_ss:          .long 0
se_esp:         .long 0
u_esp_before:   .long 0
u_esp_after:    .long 0
df_count:       .long 0
df_err:         .long 0
df_esp:         .long 0
df_eflags:      .long 0
df_link:        .long 0
df_tr:          .long 0
df_main_eip:    .long 0
        .align 16
        .space 4096
stack_top:
        .space 4096
kstack0_top:
        .space 4096
se_stack_top:
        .space 4096
df_stack_top:
        .space 4096
ustack_top:
