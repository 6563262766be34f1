/* Arm semihosting calls (Arm "Semihosting for AArch32 and AArch64", v2).
 *
 * On M-profile a call is BKPT 0xAB with the operation in r0 and a pointer to its argument
 * block in r1; the result comes back in r0.
 */
#include "mbgen_fw.h"

enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_FLEN = 0x0C,
    SYS_GET_CMDLINE = 0x15,
    SYS_EXIT = 0x18,
    SYS_EXIT_EXTENDED = 0x20,
};

/* SYS_OPEN modes are indices into the fopen() mode strings "r","rb",...,"w","wb",... */
enum { OPEN_READ_BINARY = 1, OPEN_WRITE_BINARY = 5 };

enum { ADP_STOPPED_APPLICATION_EXIT = 0x20026 };

static int semihost(int operation, void *argument)
{
    register int r0 __asm__("r0") = operation;
    register void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static size_t string_length(const char *text)
{
    size_t n = 0;
    while (text[n] != '\0') {
        n++;
    }
    return n;
}

void mbgen_fw_puts(const char *text)
{
    semihost(SYS_WRITE0, (void *)text);
}

void mbgen_fw_exit(int status)
{
    /* SYS_EXIT_EXTENDED carries the status on 32-bit Arm too (plain SYS_EXIT can only say
     * "success" or "failure"); QEMU supports it. */
    uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    semihost(SYS_EXIT_EXTENDED, block);
    /* A host without the extension: fall back to the plain call, then stop here. */
    semihost(SYS_EXIT, (void *)(uintptr_t)(status == 0 ? ADP_STOPPED_APPLICATION_EXIT : 0x20023));
    for (;;) {
    }
}

int mbgen_fw_args(const char **argv, int max_args)
{
    static char line[256];
    uint32_t block[2] = {(uint32_t)(uintptr_t)line, sizeof line};
    int argc = 0;
    if (semihost(SYS_GET_CMDLINE, block) != 0) {
        return 0;
    }
    line[sizeof line - 1] = '\0';
    for (char *p = line; *p != '\0' && argc < max_args;) {
        while (*p == ' ') {
            *p++ = '\0';
        }
        if (*p == '\0') {
            break;
        }
        argv[argc++] = p;
        while (*p != '\0' && *p != ' ') {
            p++;
        }
    }
    return argc;
}

static int open_file(const char *path, int mode)
{
    uint32_t block[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)string_length(path)};
    return semihost(SYS_OPEN, block);
}

static void close_file(int handle)
{
    uint32_t block[1] = {(uint32_t)handle};
    semihost(SYS_CLOSE, block);
}

long mbgen_fw_file_length(const char *path)
{
    int handle = open_file(path, OPEN_READ_BINARY);
    if (handle < 0) {
        return -1;
    }
    uint32_t block[1] = {(uint32_t)handle};
    long length = semihost(SYS_FLEN, block);
    close_file(handle);
    return length;
}

int mbgen_fw_read_file(const char *path, void *buffer, size_t size)
{
    int handle = open_file(path, OPEN_READ_BINARY);
    if (handle < 0) {
        return -1;
    }
    uint32_t length_block[1] = {(uint32_t)handle};
    int length = semihost(SYS_FLEN, length_block);
    /* SYS_READ returns the number of bytes it did NOT read. */
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buffer, (uint32_t)size};
    int unread = (length == (int)size) ? semihost(SYS_READ, block) : -1;
    close_file(handle);
    return unread == 0 ? 0 : -1;
}

int mbgen_fw_write_file(const char *path, const void *data, size_t size)
{
    int handle = open_file(path, OPEN_WRITE_BINARY);
    if (handle < 0) {
        return -1;
    }
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)data, (uint32_t)size};
    int unwritten = semihost(SYS_WRITE, block);
    close_file(handle);
    return unwritten == 0 ? 0 : -1;
}
