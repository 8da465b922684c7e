    .code64
    .macro puts label
    lea \label(%rip), %rsi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:
    .endm
_start:
    puts greeting
poll:
    mov $0x501, %dx
    in %dx, %al
    test %al, %al
    jnz shutdown
    mov $0x500, %dx
    in %dx, %al
    test %al, %al
    jz idle
    mov $0x3f8, %dx
    out %al, %dx
    jmp poll
idle:
    hlt
    jmp poll
shutdown:
    puts bye
    mov $0x502, %dx
    in %dx, %al
    out %al, %dx
    hlt
    jmp shutdown
greeting: .asciz "hello from the tiny guest\n"
bye: .asciz "bye\n"
