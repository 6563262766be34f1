/* Formatting without printf: text, decimals and hex appended to a caller's buffer.
 *
 * Shared by the semihosting firmware (QEMU's MPS2/MPS3 boards) and the board ports in
 * boards/, whose console is a UART: neither links printf.
 */
#include "mbgen_fw.h"

char *mbgen_fw_append_text(char *cursor, const char *text)
{
    while (*text != '\0') {
        *cursor++ = *text++;
    }
    *cursor = '\0';
    return cursor;
}

char *mbgen_fw_append_u64(char *cursor, uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        uint64_t quotient = value / 10u;
        digits[n++] = (char)('0' + (int)(value - quotient * 10u));
        value = quotient;
    } while (value != 0);
    while (n > 0) {
        *cursor++ = digits[--n];
    }
    *cursor = '\0';
    return cursor;
}

char *mbgen_fw_append_hex32(char *cursor, uint32_t value)
{
    static const char hex[] = "0123456789abcdef";
    *cursor++ = '0';
    *cursor++ = 'x';
    for (int shift = 28; shift >= 0; shift -= 4) {
        *cursor++ = hex[(value >> shift) & 0xFu];
    }
    *cursor = '\0';
    return cursor;
}
