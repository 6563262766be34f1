/* mbgen board ports: what a board harness calls (mbgen_board.c plus the family file,
 * mbgen_stm32f4.c or mbgen_stm32f7.c, configured by the board's mbgen_board_config.h).
 *
 * The console is a UART at 115200 8N1; mbgen_fw_puts (mbgen_fw.h) writes to it, turning
 * "\n" into "\r\n". Cycles come from the DWT cycle counter (QEMU models none: it reads 0).
 */
#ifndef MBGEN_BOARD_H
#define MBGEN_BOARD_H

#include <stdint.h>

#include "mbgen_board_config.h"

#define MBGEN_BOARD_BAUD 115200u
#define MBGEN_BOARD_HSI_HZ 16000000u /* the RC oscillator every STM32F4/F7 resets to */

/* How often a status bit is polled before a step counts as failed: at the 16 MHz HSI the
 * part starts on, about 50 ms, far beyond the ~0.2 ms a PLL needs to lock. */
#define MBGEN_BOARD_POLL_LIMIT 200000u

typedef struct {
    uint32_t sysclk_hz;   /* core clock: what the DWT counts */
    uint32_t uart_hz;     /* clock of the console UART's bus */
    const char *note;     /* "PLL from HSI", or which step failed and left the part on HSI */
} mbgen_board_clocks;

/* ---- family file (mbgen_stm32f4.c / mbgen_stm32f7.c) ------------------------------------ */

/* Brings the core to MBGEN_BOARD_SYSCLK_HZ from the HSI through the PLL, every step with a
 * timeout; on any failure the part stays on the 16 MHz HSI and the note says why. */
mbgen_board_clocks mbgen_board_clock_init(void);

/* Caches and other core features the family wants on before the model runs. */
void mbgen_board_core_init(void);

void mbgen_board_uart_init(uint32_t bus_hz);  /* calls mbgen_board_uart_pins */
void mbgen_board_uart_putc(char c);
void mbgen_board_uart_flush(void);

/* ---- STM32F4/F7 GPIO (mbgen_stm32_gpio.c) ------------------------------------------------ */

/* The console UART's TX/RX pins in their alternate function, RX pulled up. */
void mbgen_board_uart_pins(void);

/* ---- common (mbgen_board.c) ----------------------------------------------------------- */

/* Clocks, core, console and cycle counter; prints "MBGEN_BOARD <name> <part> ...". */
void mbgen_board_init(void);

/* 1 when (*reg & mask) == want within MBGEN_BOARD_POLL_LIMIT reads, else 0. */
int mbgen_board_wait(volatile const uint32_t *reg, uint32_t mask, uint32_t want);

/* The DWT cycle counter (32 bits: wraps after 2^32 cycles, ~20 s at 216 MHz). */
uint32_t mbgen_board_cycles(void);

#endif /* MBGEN_BOARD_H */
