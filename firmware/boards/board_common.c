/* What every board port shares: start-up order, the UART console behind mbgen_fw_puts, the
 * DWT cycle counter and the end of the program (no semihosting: without a debugger a BKPT
 * would fault, so the board prints its exit status and sleeps).
 */
#include "mbgen_board.h"
#include "mbgen_fw.h"

/* Armv7-M debug registers (ARM DDI 0403, C1.6 and C1.8). */
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)
#define DWT_CTRL_CYCCNTENA (1u << 0)
#define DWT_LAR_UNLOCK 0xC5ACCE55u /* the Cortex-M7 DWT is locked until this is written */

int mbgen_board_wait(volatile const uint32_t *reg, uint32_t mask, uint32_t want)
{
    for (uint32_t n = 0; n < MBGEN_BOARD_POLL_LIMIT; n++) {
        if ((*reg & mask) == want) {
            return 1;
        }
    }
    return 0;
}

void mbgen_fw_puts(const char *text)
{
    for (; *text != '\0'; text++) {
        if (*text == '\n') {
            mbgen_board_uart_putc('\r');
        }
        mbgen_board_uart_putc(*text);
    }
}

void mbgen_fw_exit(int status)
{
    char line[32];
    char *p = mbgen_fw_append_text(line, "MBGEN_EXIT ");
    p = mbgen_fw_append_u64(p, (uint64_t)(uint32_t)status);
    mbgen_fw_append_text(p, "\n");
    mbgen_fw_puts(line);
    mbgen_board_uart_flush();
    for (;;) {
        __asm__ volatile("wfi");
    }
}

/* The shared vector table names SysTick's handler; boards never start SysTick. */
void mbgen_fw_systick_handler(void);
void mbgen_fw_systick_handler(void)
{
}

static void cycle_counter_start(void)
{
    DEMCR |= DEMCR_TRCENA;
#ifdef MBGEN_BOARD_DWT_LOCKED
    DWT_LAR = DWT_LAR_UNLOCK;
#endif
    DWT_CYCCNT = 0;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

uint32_t mbgen_board_cycles(void)
{
    return DWT_CYCCNT;
}

void mbgen_board_init(void)
{
    mbgen_board_clocks clocks = mbgen_board_clock_init();
    mbgen_board_core_init();
    mbgen_board_uart_init(clocks.uart_hz);
    cycle_counter_start();
    char line[160];
    char *p = mbgen_fw_append_text(line, "MBGEN_BOARD " MBGEN_BOARD_NAME " " MBGEN_BOARD_PART
                                         " sysclk_hz=");
    p = mbgen_fw_append_u64(p, clocks.sysclk_hz);
    p = mbgen_fw_append_text(p, " (");
    p = mbgen_fw_append_text(p, clocks.note);
    mbgen_fw_append_text(p, ")\n");
    mbgen_fw_puts(line);
}
