/*
 * hello: the smallest multiboot kernel. Prints a greeting and what the
 * loader handed over (EAX magic, mem_lower/mem_upper, the command line, the
 * memory map), checks the magic and the info flags, and exits with 33.
 */
#include "lib32.S"

        .globl _start
_start:
        cli
        mov %eax, %ebp                  /* keep the boot magic */
        ZERO_BSS                        /* (keeps EBX, the info pointer) */
        mov $stack_top, %esp
        mov %ebp, boot_magic
        mov %ebx, boot_info

        call serial_init
        PUTS "Hello from multiboot\n"

        PUTS "magic "
        mov boot_magic, %eax
        call put0x
        call putnl

        mov boot_info, %ebx
        PUTS "flags "
        mov (%ebx), %eax
        call put0x
        call putnl

        testl $1, (%ebx)
        jz 1f
        PUTS "mem_lower "
        mov 4(%ebx), %eax
        call putdec
        PUTS " KiB\nmem_upper "
        mov 8(%ebx), %eax
        call putdec
        PUTS " KiB\n"
1:
        testl $4, (%ebx)
        jz 1f
        PUTS "cmdline '"
        mov 16(%ebx), %esi
        call puts
        PUTS "'\n"
1:
        testl $(1 << 6), (%ebx)
        jz 3f
        /* Memory map: entries of (size, base64, len64, type), size excluding
         * the size field itself. */
        mov 48(%ebx), %esi              /* mmap_addr */
        mov 44(%ebx), %ecx              /* mmap_length */
        add %esi, %ecx
2:      cmp %ecx, %esi
        jae 3f
        PUTS "mmap base "
        mov 8(%esi), %eax
        call put0x
        mov 4(%esi), %eax
        call puthex
        PUTS " len "
        mov 16(%esi), %eax
        call put0x
        mov 12(%esi), %eax
        call puthex
        PUTS " type "
        mov 20(%esi), %eax
        call putdec
        call putnl
        mov (%esi), %eax
        lea 4(%esi, %eax), %esi
        jmp 2b
3:
        mov boot_info, %ebx
        CHECK "boot magic", boot_magic, $MB_BOOT_MAGIC
        mov (%ebx), %eax
        and $5, %eax
        CHECK "info has memory and cmdline", %eax, $5
        call finish

        .bss
        .align 16
boot_magic:     .long 0
boot_info:      .long 0
        .align 16
        .space 8192
stack_top:
