/*
 * cpubench: a CPU-bound integer workload for bench/cpu.sh. Each iteration
 * runs a sieve of Eratosthenes up to 65536, a bitwise CRC-32 over 16 KiB of
 * the sieve, and a bubble sort of 1000 pseudo-random words (seeded by the
 * iteration number), and folds the three results into a checksum. The
 * iteration count comes from "iters=N" on the multiboot command line
 * (default 10). Prints the checksum and exits with 33, or with 35 if the
 * sort came out unsorted.
 *
 * 32-bit protected mode, paging off, no interrupts: only the integer core,
 * the port I/O to COM1 and isa-debug-exit.
 */
#include "lib32.S"

#define DEFAULT_ITERS   10
#define SIEVE_N         65536
#define CRC_LEN         16384
#define SORT_N          1000

        .globl _start
_start:
        cli
        mov %ebx, %ebp                          /* multiboot info */
        ZERO_BSS
        mov $stack_top, %esp
        call serial_init

        movl $DEFAULT_ITERS, iters
        testl $4, (%ebp)
        jz 1f
        mov 16(%ebp), %esi
        call parse_iters
1:      PUTS "cpubench: iters="
        mov iters, %eax
        call putdec
        call putnl

        xor %ebx, %ebx                          /* iteration */
        movl $0, checksum
2:      cmp iters, %ebx
        jae 3f
        call sieve
        mov %eax, primes
        xor %eax, checksum
        roll $5, checksum
        call crc32
        mov %eax, crc
        xor %eax, checksum
        roll $5, checksum
        mov %ebx, %eax
        call sort
        xor %eax, checksum
        roll $5, checksum
        inc %ebx
        jmp 2b
3:
        PUTS "cpubench: primes="
        mov primes, %eax
        call putdec
        PUTS " crc="
        mov crc, %eax
        call puthex
        PUTS " checksum="
        mov checksum, %eax
        call puthex
        call putnl
        cmpl $0, unsorted
        jne 4f
        PUTS "cpubench: done\n"
        mov $EXIT_OK, %al
        jmp exit
4:      PUTS "FAIL cpubench: sort left the array unsorted\n"
        mov $EXIT_FAIL, %al
        jmp exit

/* ESI = command line; sets iters from "iters=N" if present. */
parse_iters:
        cld
1:      cmpb $0, (%esi)
        je 9f
        push %esi
        mov $iters_key, %edi
        mov $6, %ecx
        repe cmpsb
        pop %eax
        je 2f
        lea 1(%eax), %esi
        jmp 1b
2:      xor %eax, %eax                          /* ESI: the digits */
        xor %ecx, %ecx
3:      movzbl (%esi), %edx
        sub $'0', %edx
        cmp $9, %edx
        ja 4f
        imul $10, %eax, %eax
        add %edx, %eax
        inc %esi
        inc %ecx
        jmp 3b
4:      test %ecx, %ecx
        jz 9f
        mov %eax, iters
9:      ret

/* Returns the number of primes below SIEVE_N in EAX. */
sieve:
        push %ebx
        push %ecx
        push %edx
        push %edi
        cld
        mov $sieve_buf, %edi
        mov $SIEVE_N, %ecx
        mov $1, %al
        rep stosb
        movb $0, sieve_buf
        movb $0, sieve_buf + 1
        mov $2, %ebx
1:      mov %ebx, %eax
        imul %ebx, %eax
        cmp $SIEVE_N, %eax
        jae 4f
        cmpb $0, sieve_buf(%ebx)
        je 3f
2:      movb $0, sieve_buf(%eax)
        add %ebx, %eax
        cmp $SIEVE_N, %eax
        jb 2b
3:      inc %ebx
        jmp 1b
4:      xor %eax, %eax
        xor %ecx, %ecx
5:      movzbl sieve_buf(%ecx), %edx
        add %edx, %eax
        inc %ecx
        cmp $SIEVE_N, %ecx
        jb 5b
        pop %edi
        pop %edx
        pop %ecx
        pop %ebx
        ret

/* Bitwise CRC-32 (reflected, polynomial 0xedb88320) of the first CRC_LEN
 * bytes of the sieve, in EAX. */
crc32:
        push %ecx
        push %edx
        push %esi
        mov $0xffffffff, %eax
        mov $sieve_buf, %esi
        mov $CRC_LEN, %ecx
1:      movzbl (%esi), %edx
        xor %edx, %eax
        mov $8, %edx
2:      shr $1, %eax
        jnc 3f
        xor $0xedb88320, %eax
3:      dec %edx
        jnz 2b
        inc %esi
        dec %ecx
        jnz 1b
        not %eax
        pop %esi
        pop %edx
        pop %ecx
        ret

/* EAX = seed. Fills SORT_N words from a linear congruential generator,
 * bubble-sorts them, and returns sum(a[i] * (i + 1)) in EAX. */
sort:
        push %ebx
        push %ecx
        push %edx
        push %esi
        push %edi
        imul $0x9e3779b1, %eax, %eax
        inc %eax
        xor %ecx, %ecx
1:      imul $1103515245, %eax, %eax
        add $12345, %eax
        mov %eax, sort_buf(, %ecx, 4)
        inc %ecx
        cmp $SORT_N, %ecx
        jb 1b
        mov $SORT_N - 1, %esi                   /* pass bound */
2:      xor %ecx, %ecx
        xor %edi, %edi                          /* swapped? */
3:      mov sort_buf(, %ecx, 4), %eax
        mov sort_buf + 4(, %ecx, 4), %edx
        cmp %edx, %eax
        jbe 4f
        mov %edx, sort_buf(, %ecx, 4)
        mov %eax, sort_buf + 4(, %ecx, 4)
        inc %edi
4:      inc %ecx
        cmp %esi, %ecx
        jb 3b
        test %edi, %edi
        jz 5f
        dec %esi
        jnz 2b
5:      xor %eax, %eax                          /* checksum, and sortedness */
        xor %ecx, %ecx
6:      mov sort_buf(, %ecx, 4), %edx
        lea 1(%ecx), %ebx
        imul %ebx, %edx
        add %edx, %eax
        cmp $SORT_N - 1, %ecx
        jae 7f
        mov sort_buf(, %ecx, 4), %edx
        cmp sort_buf + 4(, %ecx, 4), %edx
        jbe 7f
        incl unsorted
7:      inc %ecx
        cmp $SORT_N, %ecx
        jb 6b
        pop %edi
        pop %esi
        pop %edx
        pop %ecx
        pop %ebx
        ret

        .section .rodata
iters_key:      .ascii "iters="

        .bss
        .align 16
iters:          .long 0
checksum:       .long 0
primes:         .long 0
crc:            .long 0
unsorted:       .long 0
        .align 16
sieve_buf:      .space SIEVE_N
sort_buf:       .space SORT_N * 4
        .space 8192
stack_top:
