/* Instruction counter: SysTick at the core clock, extended to 64 bits by its wrap interrupt.
 *
 * Under `qemu-system-arm -icount shift=S` virtual time advances exactly 2^S ns per guest
 * instruction, and SysTick (CLKSOURCE = processor clock) ticks every 1e9 / f_sysclk ns of
 * virtual time. So ticks * (1e9 / f_sysclk) / 2^S is the number of instructions executed.
 * The runner picks S so that one instruction lasts at least one tick (2^S >= 1e9/f_sysclk)
 * and passes the reduced fraction 1e9 / (f_sysclk * 2^S) as MBGEN_INSN_PER_TICK_NUM/DEN;
 * then each reading is exact to within one instruction (see firmware/README.md).
 */
#include "mbgen_fw.h"

#ifndef MBGEN_INSN_PER_TICK_NUM
#define MBGEN_INSN_PER_TICK_NUM 1u /* without the runner's constants: raw SysTick ticks */
#endif
#ifndef MBGEN_INSN_PER_TICK_DEN
#define MBGEN_INSN_PER_TICK_DEN 1u
#endif

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_TICKINT (1u << 1)
#define SYST_CSR_CLKSOURCE_CPU (1u << 2)

#define SYST_RELOAD 0x00FFFFFFu /* 24-bit counter: the longest period */

static volatile uint32_t wraps;

void mbgen_fw_systick_handler(void)
{
    wraps++;
}

void mbgen_fw_counter_start(void)
{
    SYST_CSR = 0;
    wraps = 0;
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0; /* any write clears the count; the first tick reloads it */
    SYST_CSR = SYST_CSR_ENABLE | SYST_CSR_TICKINT | SYST_CSR_CLKSOURCE_CPU;
    /* Wait for that first reload, so readings are monotonic from here on. */
    while (SYST_CVR == 0) {
    }
}

static uint64_t ticks(void)
{
    uint32_t before, value, after;
    do {
        /* A wrap between the reads raises the interrupt, which changes `wraps`: retry. */
        before = wraps;
        value = SYST_CVR;
        after = wraps;
    } while (before != after);
    return (uint64_t)before * (SYST_RELOAD + 1u) + (SYST_RELOAD - value);
}

uint64_t mbgen_fw_instructions(void)
{
    uint64_t t = ticks();
    /* Round up: the tick count is floor(instructions * DEN / NUM). */
    return (t * MBGEN_INSN_PER_TICK_NUM + (MBGEN_INSN_PER_TICK_DEN - 1u)) / MBGEN_INSN_PER_TICK_DEN;
}
