/* Reset, vector table and fault reporting for Armv7-M / Armv8-M cores on QEMU's MPS2/MPS3.
 *
 * Reset enables the FPU (and MVE, which shares its enable bits) before any C runs, copies
 * .data from its load address, zeroes .bss, arms the configurable fault handlers and, on
 * Armv8-M, the main stack limit, then calls main() and exits with its status through
 * semihosting. Every fault prints one line "FAULT <name> pc=... cause=..." and exits with
 * MBGEN_FW_EXIT_FAULT.
 *
 * Stack overflow is caught, not left to corrupt .bss: by the main stack limit register on
 * Armv8-M (exact), by an inaccessible MPU region of STACK_GUARD_BYTES just below the stack
 * reserve on Armv7-M (__stack_guard, aligned to its size by the linker script; a frame that
 * jumps over it in one step can still slip through).
 */
#include "mbgen_fw.h"

#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
#define MBGEN_FW_V8M 1
#else
#define MBGEN_FW_V8M 0
#endif

/* Armv7-M MPU guard: 2^(STACK_GUARD_SIZE_FIELD + 1) bytes (MBGEN_STACK_GUARD_SIZE in ld). */
#define STACK_GUARD_SIZE_FIELD 9u
#define STACK_GUARD_BYTES (1u << (STACK_GUARD_SIZE_FIELD + 1u))

/* System Control Block registers (same addresses on Armv7-M and Armv8-M). */
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_SHCSR (*(volatile uint32_t *)0xE000ED24u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)
#define SCB_SFSR (*(volatile uint32_t *)0xE000EDE4u)

#define SHCSR_MEMFAULTENA (1u << 16)
#define SHCSR_BUSFAULTENA (1u << 17)
#define SHCSR_USGFAULTENA (1u << 18)
#define SHCSR_SECUREFAULTENA (1u << 19)
#define MPU_TYPE (*(volatile uint32_t *)0xE000ED90u)
#define MPU_CTRL (*(volatile uint32_t *)0xE000ED94u)
#define MPU_RNR (*(volatile uint32_t *)0xE000ED98u)
#define MPU_RBAR (*(volatile uint32_t *)0xE000ED9Cu)
#define MPU_RASR (*(volatile uint32_t *)0xE000EDA0u)

#define CFSR_MMARVALID (1u << 7)
#define CFSR_BFARVALID (1u << 15)

/* Symbols from firmware/ld/common.ld. */
extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[], __stack_guard[];
extern uint32_t __ram_start[], __ram_end[];

int main(void);
void mbgen_fw_systick_handler(void);
void mbgen_fw_reset(void);
void mbgen_fw_start(void);
void mbgen_fw_fault_report(const uint32_t *frame, uint32_t exception_number);

/* Fault reports run on a stack of their own, so a stack overflow can still be reported: the
 * 1 KB guard gap the linker script leaves below the main stack (no-access to the MPU on
 * Armv7-M, which is why the MPU goes off first). It costs no RAM beyond that gap. */
extern uint32_t __fault_stack_top[];

__attribute__((naked)) static void fault_entry(void)
{
    __asm__ volatile(
        /* r0 = the stacked exception frame (MSP or PSP per EXC_RETURN bit 2), r1 = IPSR. */
        "tst lr, #4\n"
        "ite eq\n"
        "mrseq r0, msp\n"
        "mrsne r0, psp\n"
        "mrs r1, ipsr\n"
#if MBGEN_FW_V8M
        "movs r2, #0\n"
        "msr msplim, r2\n"
#else
        "movw r2, #0xED94\n" /* MPU_CTRL = 0 */
        "movt r2, #0xE000\n"
        "movs r3, #0\n"
        "str r3, [r2]\n"
        "dsb\n"
        "isb\n"
#endif
        "movw r2, #:lower16:__fault_stack_top\n"
        "movt r2, #:upper16:__fault_stack_top\n"
        "mov sp, r2\n"
        "b mbgen_fw_fault_report\n");
}

typedef void (*vector_t)(void);

/* Exceptions 0..15; no external interrupt is ever enabled, so none needs a vector. */
__attribute__((section(".vectors"), used)) static const vector_t vector_table[16] = {
    (vector_t)(uintptr_t)__stack_top,
    mbgen_fw_reset,
    fault_entry, /* NMI */
    fault_entry, /* HardFault */
    fault_entry, /* MemManage */
    fault_entry, /* BusFault */
    fault_entry, /* UsageFault */
    fault_entry, /* SecureFault (Armv8-M) */
    0,
    0,
    0,
    fault_entry, /* SVCall */
    fault_entry, /* DebugMonitor */
    0,
    fault_entry, /* PendSV */
    mbgen_fw_systick_handler,
};

__attribute__((naked, noreturn)) void mbgen_fw_reset(void)
{
    __asm__ volatile(
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
        /* CPACR: full access to CP10/CP11 (FPU and MVE) before the compiler may use them. */
        "movw r0, #0xED88\n"
        "movt r0, #0xE000\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
#endif
        "b mbgen_fw_start\n");
}

#if !MBGEN_FW_V8M
static void guard_stack_bottom(void)
{
    if (((MPU_TYPE >> 8) & 0xFFu) == 0 || ((uintptr_t)__stack_guard % STACK_GUARD_BYTES) != 0) {
        return; /* no MPU, or a guard the region cannot cover exactly */
    }
    MPU_RNR = 0;
    MPU_RBAR = (uint32_t)(uintptr_t)__stack_guard;
    /* XN, AP = no access (privileged or not), SIZE, ENABLE. */
    MPU_RASR = (1u << 28) | (0u << 24) | (STACK_GUARD_SIZE_FIELD << 1) | 1u;
    /* PRIVDEFENA: everything else keeps the default memory map. */
    MPU_CTRL = (1u << 2) | 1u;
}
#endif

/* The stack below the caller's frame is painted before main, so the peak use can be read
 * back afterwards (mbgen_fw_stack_peak): a measurement to hold the call-graph bound against. */
#define STACK_PAINT 0x5AC4C0DEu

__attribute__((noinline)) static void paint_stack(void)
{
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *word = __stack_bottom; word < sp - 16; ++word) {
        *word = STACK_PAINT;
    }
}

uint32_t mbgen_fw_stack_peak(void)
{
    const uint32_t *word = __stack_bottom;
    while (word < __stack_top && *word == STACK_PAINT) {
        ++word;
    }
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)word);
}

void mbgen_fw_start(void)
{
    SCB_VTOR = (uint32_t)(uintptr_t)vector_table;
#if MBGEN_FW_V8M
    /* Overflowing the stack becomes a UsageFault (STKOF) instead of silent corruption. */
    __asm__ volatile("msr msplim, %0" : : "r"(__stack_bottom));
#endif
    for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = __bss_start; dst < __bss_end;) {
        *dst++ = 0;
    }
    uint32_t enable = SHCSR_MEMFAULTENA | SHCSR_BUSFAULTENA | SHCSR_USGFAULTENA;
#if MBGEN_FW_V8M
    enable |= SHCSR_SECUREFAULTENA;
#endif
    SCB_SHCSR |= enable;
#if !MBGEN_FW_V8M
    guard_stack_bottom();
#endif
    __asm__ volatile("dsb\n isb" ::: "memory");
    paint_stack();
    mbgen_fw_exit(main());
}

static const char *exception_name(uint32_t number)
{
    switch (number) {
    case 2: return "NMI";
    case 3: return "HardFault";
    case 4: return "MemManage";
    case 5: return "BusFault";
    case 6: return "UsageFault";
    case 7: return "SecureFault";
    case 11: return "SVCall";
    case 12: return "DebugMonitor";
    case 14: return "PendSV";
    default: return number >= 16 ? "IRQ" : "Exception";
    }
}

/* Configurable Fault Status Register bits, by bit number. */
static const char *const cfsr_bit_names[32] = {
    [0] = "IACCVIOL", [1] = "DACCVIOL", [3] = "MUNSTKERR", [4] = "MSTKERR", [5] = "MLSPERR",
    [8] = "IBUSERR", [9] = "PRECISERR", [10] = "IMPRECISERR", [11] = "UNSTKERR",
    [12] = "STKERR", [13] = "LSPERR", [16] = "UNDEFINSTR", [17] = "INVSTATE", [18] = "INVPC",
    [19] = "NOCP", [20] = "STKOF", [24] = "UNALIGNED", [25] = "DIVBYZERO",
};

static int frame_is_readable(const uint32_t *frame)
{
    return frame >= __ram_start && frame + 8 <= __ram_end;
}

static int stack_overflowed(const uint32_t *frame)
{
#if MBGEN_FW_V8M
    (void)frame;
    return (SCB_CFSR & (1u << 20)) != 0; /* STKOF */
#else
    return frame < __stack_bottom;
#endif
}

void mbgen_fw_fault_report(const uint32_t *frame, uint32_t exception_number)
{
#if !MBGEN_FW_V8M
    MPU_CTRL = 0; /* the frame may sit in the stack guard */
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    char line[256];
    char *p = mbgen_fw_append_text(line, "FAULT ");
    p = mbgen_fw_append_text(p, exception_name(exception_number & 0x1FFu));
    if (stack_overflowed(frame)) {
        /* The exception frame was not (fully) stacked: its pc/lr would be stale memory. */
        p = mbgen_fw_append_text(p, " (stack overflow) pc=?");
    } else if (frame_is_readable(frame)) {
        p = mbgen_fw_append_text(p, " pc=");
        p = mbgen_fw_append_hex32(p, frame[6]);
        p = mbgen_fw_append_text(p, " lr=");
        p = mbgen_fw_append_hex32(p, frame[5]);
    } else {
        p = mbgen_fw_append_text(p, " pc=? (stack pointer outside RAM)");
    }
    uint32_t cfsr = SCB_CFSR;
    p = mbgen_fw_append_text(p, " cfsr=");
    p = mbgen_fw_append_hex32(p, cfsr);
    p = mbgen_fw_append_text(p, " hfsr=");
    p = mbgen_fw_append_hex32(p, SCB_HFSR);
    if (cfsr & CFSR_MMARVALID) {
        p = mbgen_fw_append_text(p, " mmfar=");
        p = mbgen_fw_append_hex32(p, SCB_MMFAR);
    }
    if (cfsr & CFSR_BFARVALID) {
        p = mbgen_fw_append_text(p, " bfar=");
        p = mbgen_fw_append_hex32(p, SCB_BFAR);
    }
#if MBGEN_FW_V8M
    if ((exception_number & 0x1FFu) == 7) {
        p = mbgen_fw_append_text(p, " sfsr=");
        p = mbgen_fw_append_hex32(p, SCB_SFSR);
    }
#endif
    const char *separator = " cause=";
    for (int bit = 0; bit < 32; bit++) {
        if ((cfsr & (1u << bit)) && cfsr_bit_names[bit] != 0) {
            p = mbgen_fw_append_text(p, separator);
            p = mbgen_fw_append_text(p, cfsr_bit_names[bit]);
            separator = ",";
        }
    }
    mbgen_fw_append_text(p, "\n");
    mbgen_fw_puts(line);
    mbgen_fw_exit(MBGEN_FW_EXIT_FAULT);
}
