/*
 * realmode: from the 32-bit multiboot entry, drops to real mode the way a
 * kernel does it (16-bit protected-mode code segment, clear CR0.PE, far jump),
 * sets up its own interrupt vector table, runs a few real-mode checks
 * (software INT + IRET through its own handler, an IVT moved with LIDT, far
 * CALL/RETF, segment arithmetic, 32-bit operands, MUL/DIV, string moves),
 * printing over COM1 with port I/O from real mode, then returns to protected
 * mode and exits with 33 if every check passed.
 *
 * Everything that runs in real mode (code, data, GDT) lives in the .low
 * section, linked at 0x8000 and copied there by the 32-bit entry, so the
 * real-mode part touches only the first 128 KiB of memory (its code at
 * 0x8000, its stack below 0x7c00, IVTs at 0 and 0x6000, one test word at
 * 0x10010) and needs no BIOS.
 */
#include "lib32.S"

#define SEL_CODE32      0x08
#define SEL_DATA32      0x10
#define SEL_CODE16      0x18
#define SEL_DATA16      0x20

#define RM_STACK        0x7c00
#define RM_IVT2         0x6000          /* the relocated IVT */
#define LOW_SEG         0x0800          /* 0x0800:0 is the start of .low */

/* Real-mode versions of PUTS and CHECK; their strings go to the end of
 * .low (subsection 1), below 64 KiB. */
.macro RM_PUTS str
        .pushsection .low, 1
.Lrm_str\@: .asciz "\str"
        .popsection
        push %si
        mov $.Lrm_str\@, %si
        call rm_puts
        pop %si
.endm

.macro RM_CHECK name, got, exp
        .pushsection .low, 1
.Lrm_name\@: .asciz "\name"
        .popsection
        push %eax
        push %edx
        push %si
        pushl \got
        pushl \exp
        popl %edx
        popl %eax
        mov $.Lrm_name\@, %si
        call rm_check
        pop %si
        pop %edx
        pop %eax
.endm

        .globl _start
_start:
        cli
        ZERO_BSS
        mov $stack_top, %esp
        call serial_init
        PUTS "realmode: 32-bit entry\n"

        /* Copy the real-mode part to 0x8000. */
        cld
        mov $low_load, %esi
        mov $low_start, %edi
        mov $low_end, %ecx
        sub %edi, %ecx
        rep movsb

        lgdt rm_gdtr
        ljmp $SEL_CODE32, $1f
1:      mov $SEL_DATA32, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov %esp, saved_esp

        /* Mask the PICs: real mode runs briefly with IF=1. */
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1

        PUTS "realmode: to 16-bit protected mode\n"
        ljmp $SEL_CODE16, $pm16_entry

/* Back from real mode, in 32-bit protected mode with our GDT. */
pm32_back:
        mov $SEL_DATA32, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov saved_esp, %esp
        PUTS "realmode: back in protected mode\n"
        mov %cr0, %eax
        and $1, %eax
        CHECK "pm cr0.pe set again", %eax, $1
        mov %cs, %eax
        movzwl %ax, %eax
        CHECK "pm cs", %eax, $SEL_CODE32
        /* The stack still holds what was pushed before the trip. */
        pushl $0x600dcafe
        popl %eax
        CHECK "pm stack", %eax, $0x600dcafe
        /* Real-mode results count as ours. */
        mov rm_passed, %eax
        add %eax, checks_passed
        mov rm_failed, %eax
        add %eax, checks_failed
        mov rm_done, %eax
        CHECK "real mode ran to the end", %eax, $0x600d
        call finish

        .bss
        .align 16
saved_esp:      .long 0
        .space 8192
stack_top:

/* ----------------------------------------------------------------------
 * Everything below runs at 0x8000.
 */
        .section .low, "awx"
        .code16
low_base:

/* 16-bit protected mode: CS = 16-bit code segment based at 0. */
pm16_entry:
        mov $SEL_DATA16, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov %cr0, %eax
        and $~1, %eax
        mov %eax, %cr0
        ljmp $0, $rm_entry

rm_entry:
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov $RM_STACK, %sp
        lidt rm_idtr
        RM_PUTS "real mode: hello from real mode\n"

        /* CR0.PE is clear. */
        smsw %ax
        and $1, %eax
        movzwl %ax, %eax
        RM_CHECK "rm cr0.pe clear", %eax, $0

        /* Segment arithmetic: 0x1000:0x0010 and 0x1001:0x0000 are the same
         * byte, linear 0x10010. */
        mov $0x1000, %ax
        mov %ax, %es
        movw $0xbeef, %es:0x10
        mov $0x1001, %ax
        mov %ax, %ds
        movzwl 0, %eax
        xor %bx, %bx
        mov %bx, %ds
        mov %bx, %es
        RM_CHECK "rm segment arithmetic", %eax, $0xbeef

        /* 32-bit operands with a 16-bit default. */
        mov $0x12345678, %eax
        add $0x11111111, %eax
        RM_CHECK "rm 32-bit add", %eax, $0x23456789
        mov $0x80000000, %ecx
        shr $28, %ecx
        RM_CHECK "rm 32-bit shift", %ecx, $8

        /* 16-bit MUL and DIV: 300 * 300 = 0x15f90 in DX:AX. */
        mov $300, %ax
        mov $300, %bx
        mul %bx
        movzwl %dx, %ecx
        shl $16, %ecx
        mov %ax, %cx
        RM_CHECK "rm mul16", %ecx, $90000
        mov $7, %bx
        div %bx                 /* 90000 / 7 = 12857 rem 1 */
        movzwl %ax, %eax
        RM_CHECK "rm div16 quotient", %eax, $12857
        movzwl %dx, %edx
        RM_CHECK "rm div16 remainder", %edx, $1

        /* REP MOVSB with DS:SI and ES:DI. */
        cld
        mov $rm_src, %si
        mov $rm_dst, %di
        mov $8, %cx
        rep movsb
        mov rm_dst + 4, %eax
        RM_CHECK "rm rep movsb", %eax, $0x34333231
        movzwl %di, %edi
        RM_CHECK "rm movsb advances di", %edi, $(rm_dst+8)

        /* Software INT through the IVT at 0: handler at 0x0800:xxxx. */
        movw $(rm_int42 - low_base), 0x42 * 4
        movw $LOW_SEG, 0x42 * 4 + 2
        movl $0, rm_int_count
        mov $0x1234, %ax
        std                     /* INT keeps DF */
        sti                     /* and clears IF (the PICs are masked) */
        int $0x42
rm_after_int:
        pushf
        cli
        cld
        popw %bx
        movzwl %bx, %ebx
        and $0x200, %ebx
        RM_CHECK "rm iret restores IF", %ebx, $0x200
        movzwl %ax, %eax
        RM_CHECK "rm int handler result", %eax, $0x1235
        RM_CHECK "rm int handler ran once", rm_int_count, $1
        RM_CHECK "rm int handler cs", rm_int_cs, $LOW_SEG
        RM_CHECK "rm int return ip", rm_int_ret_ip, $rm_after_int
        RM_CHECK "rm int return cs", rm_int_ret_cs, $0
        mov rm_int_flags, %eax
        and $0x200, %eax
        RM_CHECK "rm int clears IF", %eax, $0
        mov rm_int_flags, %eax
        and $0x400, %eax
        RM_CHECK "rm int keeps DF", %eax, $0x400
        mov rm_int_pushed_flags, %eax
        and $0x600, %eax
        RM_CHECK "rm int pushes flags", %eax, $0x600
        RM_CHECK "rm int stack", rm_int_sp, $(RM_STACK-6)

        /* The IVT is where IDTR says: move it to RM_IVT2. */
        movw $(rm_int42_moved - low_base), RM_IVT2 + 0x42 * 4
        movw $LOW_SEG, RM_IVT2 + 0x42 * 4 + 2
        lidt rm_idtr2
        movl $0, rm_int_count
        movl $0, rm_moved_count
        int $0x42
        lidt rm_idtr
        RM_CHECK "rm lidt moves the ivt", rm_moved_count, $1
        RM_CHECK "rm old ivt unused", rm_int_count, $0
        int $0x42
        RM_CHECK "rm ivt back at 0", rm_int_count, $1

        /* Far CALL and RETF to another segment. */
        movl $0, rm_far_cs
        lcall $LOW_SEG, $(rm_far - low_base)
        RM_CHECK "rm far call cs", rm_far_cs, $LOW_SEG
        RM_CHECK "rm far call result", %eax, $0xfa4ca11
        mov %cs, %ax
        movzwl %ax, %eax
        RM_CHECK "rm retf restores cs", %eax, $0

        /* PUSH/POP and the stack in SS:SP. */
        mov %sp, %bx
        pushw $0x5a5a
        pushl $0xa5a5a5a5
        mov %sp, %cx
        sub %cx, %bx
        movzwl %bx, %ebx
        RM_CHECK "rm push sizes", %ebx, $6
        popl %eax
        popw %dx
        RM_CHECK "rm pop32", %eax, $0xa5a5a5a5
        movzwl %dx, %edx
        RM_CHECK "rm pop16", %edx, $0x5a5a

        RM_PUTS "real mode: back to protected mode\n"
        movl $0x600d, rm_done
        cli
        lgdtl rm_gdtr
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmpl $SEL_CODE32, $pm32_back

/* INT 0x42 handler, entered with CS = LOW_SEG. */
rm_int42:
        push %bp
        mov %sp, %bp
        push %ax
        push %bx
        pushf
        popw %bx
        movzwl %bx, %ebx
        mov %ebx, %cs:rm_int_flags - low_base
        xor %bx, %bx
        mov %cs, %bx
        mov %ebx, %cs:rm_int_cs - low_base
        movzwl 2(%bp), %ebx
        mov %ebx, %cs:rm_int_ret_ip - low_base
        movzwl 4(%bp), %ebx
        mov %ebx, %cs:rm_int_ret_cs - low_base
        movzwl 6(%bp), %ebx
        mov %ebx, %cs:rm_int_pushed_flags - low_base
        lea 2(%bp), %bx
        movzwl %bx, %ebx
        mov %ebx, %cs:rm_int_sp - low_base
        incl %cs:rm_int_count - low_base
        pop %bx
        pop %ax
        pop %bp
        inc %ax
        iret

/* The same vector, through the relocated IVT. */
rm_int42_moved:
        incl %cs:rm_moved_count - low_base
        iret

/* Far-called with CS = LOW_SEG. */
rm_far:
        push %bx
        mov %cs, %bx
        movzwl %bx, %ebx
        mov %ebx, %cs:rm_far_cs - low_base
        pop %bx
        mov $0xfa4ca11, %eax
        lret

/* Real-mode COM1 output. */
rm_putc:
        push %dx
        push %ax
        mov $COM1_LSR, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %ax
        mov $COM1, %dx
        out %al, %dx
        pop %dx
        ret

rm_puts:                        /* DS:SI */
        push %si
        push %ax
1:      lodsb
        test %al, %al
        jz 2f
        call rm_putc
        jmp 1b
2:      pop %ax
        pop %si
        ret

rm_puthex:                      /* EAX as 0x + 8 hex digits */
        push %ecx
        push %edx
        push %ax
        mov %eax, %edx
        mov $'0', %al
        call rm_putc
        mov $'x', %al
        call rm_putc
        mov $8, %cx
1:      rol $4, %edx
        mov %dl, %al
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '0' - 10), %al
2:      call rm_putc
        loop 1b
        pop %ax
        pop %edx
        pop %ecx
        ret

/* SI = name, EAX = got, EDX = expected. */
rm_check:
        cmp %edx, %eax
        jne 1f
        push %si
        mov $rm_str_ok, %si
        call rm_puts
        pop %si
        call rm_puts
        push %ax
        mov $'\n', %al
        call rm_putc
        pop %ax
        incl rm_passed
        ret
1:      push %si
        mov $rm_str_fail, %si
        call rm_puts
        pop %si
        call rm_puts
        push %si
        mov $rm_str_got, %si
        call rm_puts
        call rm_puthex
        mov $rm_str_expected, %si
        call rm_puts
        push %eax
        mov %edx, %eax
        call rm_puthex
        mov $'\n', %al
        call rm_putc
        pop %eax
        pop %si
        incl rm_failed
        ret

        .align 8
rm_gdt:
        .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08: code32, flat */
        .quad 0x00cf92000000ffff        /* 0x10: data32, flat */
        .quad 0x00009a000000ffff        /* 0x18: code16, base 0, 64k */
        .quad 0x000092000000ffff        /* 0x20: data16, base 0, 64k */
rm_gdt_end:
        .align 4
        .word 0
rm_gdtr:
        .word rm_gdt_end - rm_gdt - 1
        .long rm_gdt
        .word 0
rm_idtr:
        .word 0x3ff
        .long 0
        .word 0
rm_idtr2:
        .word 0x3ff
        .long RM_IVT2

        .align 4
rm_passed:              .long 0
rm_failed:              .long 0
rm_done:                .long 0
rm_int_count:           .long 0
rm_moved_count:         .long 0
rm_int_cs:              .long 0
rm_int_flags:           .long 0
rm_int_pushed_flags:    .long 0
rm_int_ret_ip:          .long 0
rm_int_ret_cs:          .long 0
rm_int_sp:              .long 0
rm_far_cs:              .long 0
rm_src:                 .ascii "abcd1234"
rm_dst:                 .space 8
rm_str_ok:              .asciz "ok "
rm_str_fail:            .asciz "FAIL "
rm_str_got:             .asciz " got "
rm_str_expected:        .asciz " expected "
