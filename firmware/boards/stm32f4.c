/* STM32F4 family (RM0090: F405/F407; RM0383: F411): clock tree and USART console.
 *
 * Register addresses and bit positions are from the reference manuals; the board's
 * mbgen_board_config.h chooses the PLL factors, flash wait states, bus dividers and the
 * console USART with its pins.
 */
#include "mbgen_board.h"

#define REG(address) (*(volatile uint32_t *)(address))

/* RCC (RM0090 §7.3) */
#define RCC_BASE 0x40023800u
#define RCC_CR REG(RCC_BASE + 0x00u)
#define RCC_PLLCFGR REG(RCC_BASE + 0x04u)
#define RCC_CFGR REG(RCC_BASE + 0x08u)
#define RCC_APB1ENR REG(RCC_BASE + 0x40u)
#define RCC_CR_HSIRDY (1u << 1)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)
#define RCC_PLLCFGR_FIELDS 0x0F437FFFu /* PLLM, PLLN, PLLP, PLLSRC, PLLQ; the rest reserved */
#define RCC_CFGR_SW_MASK 0x3u
#define RCC_CFGR_SW_PLL 0x2u
#define RCC_CFGR_SWS_MASK (0x3u << 2)
#define RCC_CFGR_SWS_PLL (0x2u << 2)
#define RCC_CFGR_PRESCALERS 0x0000FCF0u /* HPRE [7:4], PPRE1 [12:10], PPRE2 [15:13] */
#define RCC_APB1ENR_PWREN (1u << 28)

/* PWR (RM0090 §5.4): voltage scaling */
#define PWR_CR REG(0x40007000u)
#define PWR_CR_VOS_MASK (0x3u << 14)

/* Flash interface (RM0090 §3.9) */
#define FLASH_ACR REG(0x40023C00u)
#define FLASH_ACR_LATENCY_MASK 0xFu
#define FLASH_ACR_PRFTEN (1u << 8)
#define FLASH_ACR_ICEN (1u << 9)
#define FLASH_ACR_DCEN (1u << 10)

/* USART (RM0090 §30.6) */
#define USART_SR REG(MBGEN_UART_BASE + 0x00u)
#define USART_DR REG(MBGEN_UART_BASE + 0x04u)
#define USART_BRR REG(MBGEN_UART_BASE + 0x08u)
#define USART_CR1 REG(MBGEN_UART_BASE + 0x0Cu)
#define USART_SR_TC (1u << 6)
#define USART_SR_TXE (1u << 7)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_UE (1u << 13)

/* PPRE encodings: 0xx = /1, 100 = /2, 101 = /4, 110 = /8, 111 = /16. */
#define PPRE_BITS(divider) ((divider) == 1u ? 0u : (divider) == 2u ? 4u : (divider) == 4u ? 5u \
                            : (divider) == 8u ? 6u : 7u)

static mbgen_board_clocks on_hsi(const char *why)
{
    mbgen_board_clocks clocks = {MBGEN_BOARD_HSI_HZ, MBGEN_BOARD_HSI_HZ, why};
    return clocks;
}

mbgen_board_clocks mbgen_board_clock_init(void)
{
    /* Reset leaves the part on the HSI with every bus at /1. */
    if (!mbgen_board_wait(&RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY)) {
        return on_hsi("RCC never reported the HSI ready: PLL not started");
    }
    /* Voltage scale for the target clock; it may only change while the PLL is off. */
    RCC_APB1ENR |= RCC_APB1ENR_PWREN;
    (void)RCC_APB1ENR; /* the write must reach the bus before PWR is touched */
    PWR_CR = (PWR_CR & ~PWR_CR_VOS_MASK) | MBGEN_PWR_VOS;
    /* Wait states before the clock rises, and read back: a part that kept the old value
     * would read flash too fast. */
    FLASH_ACR = MBGEN_FLASH_LATENCY | FLASH_ACR_PRFTEN | FLASH_ACR_ICEN | FLASH_ACR_DCEN;
    if ((FLASH_ACR & FLASH_ACR_LATENCY_MASK) != MBGEN_FLASH_LATENCY) {
        return on_hsi("flash wait states not accepted: PLL not started");
    }
    /* PLLSRC = 0: the HSI. VCO input 16 MHz / M, VCO = x N, SYSCLK = / P, 48 MHz = / Q. */
    RCC_PLLCFGR = (RCC_PLLCFGR & ~RCC_PLLCFGR_FIELDS) | MBGEN_PLL_M | (MBGEN_PLL_N << 6)
                  | (((MBGEN_PLL_P / 2u) - 1u) << 16) | (MBGEN_PLL_Q << 24);
    RCC_CR |= RCC_CR_PLLON;
    if (!mbgen_board_wait(&RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY)) {
        RCC_CR &= ~RCC_CR_PLLON;
        return on_hsi("PLL did not lock: running on HSI");
    }
    RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_PRESCALERS) | (PPRE_BITS(MBGEN_APB1_DIV) << 10)
               | (PPRE_BITS(MBGEN_APB2_DIV) << 13);
    RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL;
    if (!mbgen_board_wait(&RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL)) {
        RCC_CFGR &= ~(RCC_CFGR_SW_MASK | RCC_CFGR_PRESCALERS);
        return on_hsi("switch to the PLL not confirmed: running on HSI");
    }
    mbgen_board_clocks clocks = {MBGEN_BOARD_SYSCLK_HZ,
                                 MBGEN_BOARD_SYSCLK_HZ / MBGEN_UART_APB_DIV, "PLL from HSI"};
    return clocks;
}

void mbgen_board_core_init(void)
{
    /* Flash prefetch and caches (ART) are set with the wait states; nothing else. */
}

void mbgen_board_uart_init(uint32_t bus_hz)
{
    mbgen_board_uart_pins();
    MBGEN_UART_RCC_ENR |= MBGEN_UART_RCC_BIT;
    (void)MBGEN_UART_RCC_ENR;
    USART_CR1 = 0;
    /* 16x oversampling: BRR = bus clock / baud (mantissa and 4-bit fraction), rounded. */
    USART_BRR = (bus_hz + MBGEN_BOARD_BAUD / 2u) / MBGEN_BOARD_BAUD;
    USART_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE;
}

void mbgen_board_uart_putc(char c)
{
    /* A UART that never empties (unclocked) drops the character instead of hanging. */
    if (mbgen_board_wait(&USART_SR, USART_SR_TXE, USART_SR_TXE)) {
        USART_DR = (uint32_t)(unsigned char)c;
    }
}

void mbgen_board_uart_flush(void)
{
    (void)mbgen_board_wait(&USART_SR, USART_SR_TC, USART_SR_TC);
}
