/*
 * Shared pieces of the multiboot test kernels (32-bit protected mode):
 * the multiboot header, COM1 output, checks, and the isa-debug-exit port.
 *
 * Conventions: every routine here preserves all registers except EFLAGS.
 * Output goes to COM1 (0x3f8), polling LSR.THRE (bit 5 of 0x3fd) before each
 * byte. The kernel ends by writing to isa-debug-exit at 0xf4: QEMU and Vireo
 * exit with status (v << 1) | 1, so EXIT_OK (0x10) gives 33.
 */

#define COM1            0x3f8
#define COM1_LSR        0x3fd
#define EXIT_PORT       0xf4
#define EXIT_OK         0x10
#define EXIT_FAIL       0x11
#define EXIT_CRASH      0x12

#define MB_MAGIC        0x1badb002
#define MB_FLAGS        0x00000003      /* page-align modules, memory info */
#define MB_BOOT_MAGIC   0x2badb002

        .section .note.GNU-stack, "", @progbits

        .section .multiboot, "a"
        .align 4
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

        .text
        .code32

/* Prints a string literal. */
.macro PUTS str
        .pushsection .rodata
.Lputs_str\@: .asciz "\str"
        .popsection
        push %esi
        mov $.Lputs_str\@, %esi
        call puts
        pop %esi
.endm

/* Compares `got` with `exp` (any 32-bit source operands) and prints
 * "ok NAME" or "FAIL NAME got X expected Y". */
.macro CHECK name, got, exp
        .pushsection .rodata
.Lcheck_name\@: .asciz "\name"
        .popsection
        push %eax
        push %edx
        push %esi
        pushl \got
        pushl \exp
        pop %edx
        pop %eax
        mov $.Lcheck_name\@, %esi
        call check
        pop %esi
        pop %edx
        pop %eax
.endm

/* Zeroes the kernel's .bss (multiboot loaders zero it, but do not rely on
 * it). Clobbers EAX, ECX, EDI. */
.macro ZERO_BSS
        cld
        mov $bss_start, %edi
        mov $bss_end, %ecx
        sub %edi, %ecx
        xor %eax, %eax
        rep stosb
.endm

/* 8N1 at 115200 baud, FIFOs on; interrupts off. */
serial_init:
        push %eax
        push %edx
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx            /* IER = 0 */
        mov $COM1 + 3, %dx
        mov $0x80, %al
        out %al, %dx            /* LCR: DLAB */
        mov $COM1, %dx
        mov $1, %al
        out %al, %dx            /* DLL = 1 (115200) */
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx            /* DLM = 0 */
        mov $COM1 + 3, %dx
        mov $0x03, %al
        out %al, %dx            /* LCR: 8N1 */
        mov $COM1 + 2, %dx
        mov $0xc7, %al
        out %al, %dx            /* FCR: enable + clear FIFOs */
        mov $COM1 + 4, %dx
        mov $0x03, %al
        out %al, %dx            /* MCR: DTR, RTS */
        pop %edx
        pop %eax
        ret

/* Writes AL to COM1. */
putc:
        push %edx
        push %eax
        mov $COM1_LSR, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %eax
        mov $COM1, %dx
        out %al, %dx
        pop %edx
        ret

/* Writes the NUL-terminated string at ESI. */
puts:
        push %esi
        push %eax
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %eax
        pop %esi
        ret

putnl:
        push %eax
        mov $'\n', %al
        call putc
        pop %eax
        ret

putsp:
        push %eax
        mov $' ', %al
        call putc
        pop %eax
        ret

/* EAX as 8 hex digits, no prefix. */
puthex:
        push %ecx
        push %eax
        push %edx
        mov %eax, %edx
        mov $8, %ecx
1:      rol $4, %edx
        mov %dl, %al
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '0' - 10), %al
2:      call putc
        loop 1b
        pop %edx
        pop %eax
        pop %ecx
        ret

/* EAX as "0x" + hex. */
put0x:
        push %eax
        mov $'0', %al
        call putc
        mov $'x', %al
        call putc
        pop %eax
        jmp puthex

/* EAX as unsigned decimal. */
putdec:
        push %eax
        push %ecx
        push %edx
        push %ebx
        mov $10, %ebx
        xor %ecx, %ecx
1:      xor %edx, %edx
        div %ebx
        push %edx
        inc %ecx
        test %eax, %eax
        jnz 1b
2:      pop %eax
        add $'0', %al
        call putc
        loop 2b
        pop %ebx
        pop %edx
        pop %ecx
        pop %eax
        ret

/* ESI = name, EAX = got, EDX = expected. */
check:
        cmp %edx, %eax
        jne 1f
        PUTS "ok "
        call puts
        call putnl
        incl checks_passed
        ret
1:      PUTS "FAIL "
        call puts
        PUTS " got "
        call put0x
        PUTS " expected "
        push %eax
        mov %edx, %eax
        call put0x
        pop %eax
        call putnl
        incl checks_failed
        ret

/* Prints the totals and exits: success only if no check failed. */
finish:
        PUTS "checks: "
        mov checks_passed, %eax
        call putdec
        PUTS " ok, "
        mov checks_failed, %eax
        call putdec
        PUTS " failing\n"
        cmpl $0, checks_failed
        jne 1f
        PUTS "ALL TESTS PASSED\n"
        mov $EXIT_OK, %al
        jmp exit
1:      PUTS "SOME TESTS FAILED\n"
        mov $EXIT_FAIL, %al
        /* fall through */

/* Exits through isa-debug-exit with AL; halts if there is no such device. */
exit:
        out %al, $EXIT_PORT
        cli
1:      hlt
        jmp 1b

        .data
        .align 4
checks_passed:  .long 0
checks_failed:  .long 0
        .text
