/*
 * 64-bit versions of the lib32.S helpers (include lib32.S first: the check
 * counters are shared). All routines preserve every register but RFLAGS.
 * They use absolute 32-bit addresses: the kernels run identity-mapped below
 * 2 GiB.
 */

        .text
        .code64

.macro PUTS64 str
        .pushsection .rodata
.Lputs64_str\@: .asciz "\str"
        .popsection
        push %rsi
        mov $.Lputs64_str\@, %esi
        call puts64
        pop %rsi
.endm

/* Compares two 64-bit operands (registers, memory, or immediates that fit
 * in a sign-extended 32 bits). */
.macro CHECK64 name, got, exp
        .pushsection .rodata
.Lcheck64_name\@: .asciz "\name"
        .popsection
        push %rax
        push %rdx
        push %rsi
        pushq \got
        pushq \exp
        pop %rdx
        pop %rax
        mov $.Lcheck64_name\@, %esi
        call check64
        pop %rsi
        pop %rdx
        pop %rax
.endm

putc64:
        push %rdx
        push %rax
        mov $COM1_LSR, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %rax
        mov $COM1, %dx
        out %al, %dx
        pop %rdx
        ret

puts64:                                 /* RSI */
        push %rsi
        push %rax
1:      lodsb
        test %al, %al
        jz 2f
        call putc64
        jmp 1b
2:      pop %rax
        pop %rsi
        ret

putnl64:
        push %rax
        mov $'\n', %al
        call putc64
        pop %rax
        ret

puthex64:                               /* RAX as 0x + 16 hex digits */
        push %rcx
        push %rdx
        push %rax
        mov %rax, %rdx
        mov $'0', %al
        call putc64
        mov $'x', %al
        call putc64
        mov $16, %ecx
1:      rol $4, %rdx
        mov %dl, %al
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '0' - 10), %al
2:      call putc64
        dec %ecx
        jnz 1b
        pop %rax
        pop %rdx
        pop %rcx
        ret

putdec64:                               /* RAX as unsigned decimal */
        push %rax
        push %rcx
        push %rdx
        push %rbx
        mov $10, %ebx
        xor %ecx, %ecx
1:      xor %edx, %edx
        div %rbx
        push %rdx
        inc %ecx
        test %rax, %rax
        jnz 1b
2:      pop %rax
        add $'0', %al
        call putc64
        dec %ecx
        jnz 2b
        pop %rbx
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* RSI = name, RAX = got, RDX = expected. */
check64:
        cmp %rdx, %rax
        jne 1f
        PUTS64 "ok "
        call puts64
        call putnl64
        incl checks_passed
        ret
1:      PUTS64 "FAIL "
        call puts64
        PUTS64 " got "
        call puthex64
        PUTS64 " expected "
        push %rax
        mov %rdx, %rax
        call puthex64
        pop %rax
        call putnl64
        incl checks_failed
        ret

finish64:
        PUTS64 "checks: "
        mov checks_passed, %eax
        call putdec64
        PUTS64 " ok, "
        mov checks_failed, %eax
        call putdec64
        PUTS64 " failing\n"
        cmpl $0, checks_failed
        jne 1f
        PUTS64 "ALL TESTS PASSED\n"
        mov $EXIT_OK, %al
        jmp exit64
1:      PUTS64 "SOME TESTS FAILED\n"
        mov $EXIT_FAIL, %al
exit64:
        out %al, $EXIT_PORT
        cli
1:      hlt
        jmp 1b

        .code32
