/* mbgen bare-metal firmware for QEMU's Arm MPS2/MPS3 boards: the API a harness uses.
 *
 * No libc I/O and no heap: output goes through Arm semihosting (BKPT 0xAB), which QEMU
 * serves when started with -semihosting-config enable=on,target=native. Files named here
 * are opened by QEMU relative to its working directory.
 *
 * The board ports (firmware/boards/) implement mbgen_fw_puts and mbgen_fw_exit over their
 * console UART instead, and nothing else of the semihosting section.
 */
#ifndef MBGEN_FW_H
#define MBGEN_FW_H

#include <stddef.h>
#include <stdint.h>

/* Exit status of a firmware that faulted (any fault handler): distinct from a harness's 0/1. */
#define MBGEN_FW_EXIT_FAULT 250

/* ---- semihosting -------------------------------------------------------------------- */

/* Writes a NUL-terminated string to QEMU's console (stdout). */
void mbgen_fw_puts(const char *text);

/* Ends the program; QEMU exits with `status` (0..255). Never returns. */
void mbgen_fw_exit(int status) __attribute__((noreturn));

/* Splits the semihosting command line (the `arg=` list of -semihosting-config, argv[0]
 * first) into at most `max_args` words, in place in a static buffer. Returns how many. */
int mbgen_fw_args(const char **argv, int max_args);

/* Whole-file transfers. Return 0 on success, -1 when the file cannot be opened or has not
 * exactly `size` bytes (read) or cannot be written in full (write). */
int mbgen_fw_read_file(const char *path, void *buffer, size_t size);
int mbgen_fw_write_file(const char *path, const void *data, size_t size);

/* Length of a file in bytes, or -1 when it cannot be opened. */
long mbgen_fw_file_length(const char *path);

/* ---- formatting without printf ------------------------------------------------------- */

/* Appends text / a decimal / a 0x-prefixed 8-digit hex number at `cursor`, NUL-terminates,
 * and returns the new end. The caller sizes the buffer (an int64 needs 20 characters). */
char *mbgen_fw_append_text(char *cursor, const char *text);
char *mbgen_fw_append_u64(char *cursor, uint64_t value);
char *mbgen_fw_append_hex32(char *cursor, uint32_t value);

/* ---- instruction counter --------------------------------------------------------------- */

/* Starts the counter (SysTick at the core clock, wraps counted by its interrupt). */
void mbgen_fw_counter_start(void);

/* Guest instructions QEMU executed since mbgen_fw_counter_start(), exact when QEMU runs
 * with the -icount shift the firmware was built for (see firmware/README.md). */
uint64_t mbgen_fw_instructions(void);

/* ---- stack ----------------------------------------------------------------------------- */

/* The most bytes of the main stack used since reset (its painted words read back). */
uint32_t mbgen_fw_stack_peak(void);

#endif /* MBGEN_FW_H */
