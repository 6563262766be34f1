/* STM32F7 family (RM0385: F745/F746/F756): clock tree with over-drive, L1 caches, USART
 * console.
 *
 * Register addresses and bit positions are from RM0385 and the Armv7-M Architecture
 * Reference Manual (cache maintenance); mbgen_board_config.h chooses the PLL factors, flash
 * wait states, bus dividers and the console USART with its pins.
 */
#include "mbgen_board.h"

#define REG(address) (*(volatile uint32_t *)(address))

/* RCC (RM0385 §5.3) */
#define RCC_BASE 0x40023800u
#define RCC_CR REG(RCC_BASE + 0x00u)
#define RCC_PLLCFGR REG(RCC_BASE + 0x04u)
#define RCC_CFGR REG(RCC_BASE + 0x08u)
#define RCC_APB1ENR REG(RCC_BASE + 0x40u)
#define RCC_CR_HSIRDY (1u << 1)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)
#define RCC_PLLCFGR_FIELDS 0x0F437FFFu /* PLLM, PLLN, PLLP, PLLSRC, PLLQ */
#define RCC_CFGR_SW_MASK 0x3u
#define RCC_CFGR_SW_PLL 0x2u
#define RCC_CFGR_SWS_MASK (0x3u << 2)
#define RCC_CFGR_SWS_PLL (0x2u << 2)
#define RCC_CFGR_PRESCALERS 0x0000FCF0u /* HPRE [7:4], PPRE1 [12:10], PPRE2 [15:13] */
#define RCC_APB1ENR_PWREN (1u << 28)

/* PWR (RM0385 §4.4): voltage scaling and over-drive (needed above 180 MHz) */
#define PWR_CR1 REG(0x40007000u)
#define PWR_CSR1 REG(0x40007004u)
#define PWR_CR1_VOS_MASK (0x3u << 14)
#define PWR_CR1_ODEN (1u << 16)
#define PWR_CR1_ODSWEN (1u << 17)
#define PWR_CSR1_ODRDY (1u << 16)
#define PWR_CSR1_ODSWRDY (1u << 17)

/* Flash interface (RM0385 §3.7) */
#define FLASH_ACR REG(0x40023C00u)
#define FLASH_ACR_LATENCY_MASK 0xFu
#define FLASH_ACR_PRFTEN (1u << 8)
#define FLASH_ACR_ARTEN (1u << 9)

/* USART (RM0385 §31.8): a different layout from the F4's */
#define USART_CR1 REG(MBGEN_UART_BASE + 0x00u)
#define USART_BRR REG(MBGEN_UART_BASE + 0x0Cu)
#define USART_ISR REG(MBGEN_UART_BASE + 0x1Cu)
#define USART_TDR REG(MBGEN_UART_BASE + 0x28u)
#define USART_CR1_UE (1u << 0)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_ISR_TC (1u << 6)
#define USART_ISR_TXE (1u << 7)

/* Armv7-M cache maintenance (ARM DDI 0403, B2.2.7 and B3.2.2) */
#define SCB_CCR REG(0xE000ED14u)
#define SCB_CCSIDR REG(0xE000ED80u)
#define SCB_CSSELR REG(0xE000ED84u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_DCISW REG(0xE000EF60u)
#define SCB_CCR_DC (1u << 16)
#define SCB_CCR_IC (1u << 17)

#define PPRE_BITS(divider) ((divider) == 1u ? 0u : (divider) == 2u ? 4u : (divider) == 4u ? 5u \
                            : (divider) == 8u ? 6u : 7u)

static mbgen_board_clocks on_hsi(const char *why)
{
    mbgen_board_clocks clocks = {MBGEN_BOARD_HSI_HZ, MBGEN_BOARD_HSI_HZ, why};
    return clocks;
}

mbgen_board_clocks mbgen_board_clock_init(void)
{
    if (!mbgen_board_wait(&RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY)) {
        return on_hsi("RCC never reported the HSI ready: PLL not started");
    }
    RCC_APB1ENR |= RCC_APB1ENR_PWREN;
    (void)RCC_APB1ENR;
    PWR_CR1 = (PWR_CR1 & ~PWR_CR1_VOS_MASK) | MBGEN_PWR_VOS;
    /* PLLSRC = 0: the HSI. VCO input 16 MHz / M, VCO = x N, SYSCLK = / P, 48 MHz = / Q. */
    RCC_PLLCFGR = (RCC_PLLCFGR & ~RCC_PLLCFGR_FIELDS) | MBGEN_PLL_M | (MBGEN_PLL_N << 6)
                  | (((MBGEN_PLL_P / 2u) - 1u) << 16) | (MBGEN_PLL_Q << 24);
    RCC_CR |= RCC_CR_PLLON;
    /* Over-drive, in RM0385 §4.1.4's order: after PLLON, before the switch. */
    PWR_CR1 |= PWR_CR1_ODEN;
    if (!mbgen_board_wait(&PWR_CSR1, PWR_CSR1_ODRDY, PWR_CSR1_ODRDY)) {
        PWR_CR1 &= ~PWR_CR1_ODEN;
        RCC_CR &= ~RCC_CR_PLLON;
        return on_hsi("over-drive not ready: running on HSI");
    }
    PWR_CR1 |= PWR_CR1_ODSWEN;
    if (!mbgen_board_wait(&PWR_CSR1, PWR_CSR1_ODSWRDY, PWR_CSR1_ODSWRDY)) {
        PWR_CR1 &= ~(PWR_CR1_ODEN | PWR_CR1_ODSWEN);
        RCC_CR &= ~RCC_CR_PLLON;
        return on_hsi("over-drive switch not ready: running on HSI");
    }
    FLASH_ACR = MBGEN_FLASH_LATENCY | FLASH_ACR_PRFTEN | FLASH_ACR_ARTEN;
    if ((FLASH_ACR & FLASH_ACR_LATENCY_MASK) != MBGEN_FLASH_LATENCY) {
        RCC_CR &= ~RCC_CR_PLLON;
        return on_hsi("flash wait states not accepted: running on HSI");
    }
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

static uint32_t log2_ceil(uint32_t n)
{
    uint32_t bits = 0;
    while ((1u << bits) < n) {
        bits++;
    }
    return bits;
}

void mbgen_board_core_init(void)
{
    /* Weights stream from flash over AXI: the L1 caches make that fast. Invalidate both
     * (their contents are undefined after reset), then enable them. No DMA touches the
     * arena, so write-back data caching is safe. */
    __asm__ volatile("dsb\n isb" ::: "memory");
    SCB_ICIALLU = 0;
    SCB_CSSELR = 0; /* level 1 data cache */
    __asm__ volatile("dsb" ::: "memory");
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    uint32_t set_shift = (ccsidr & 0x7u) + 4u; /* log2 of the line length in bytes */
    uint32_t way_shift = 32u - log2_ceil(ways);
    for (uint32_t way = 0; way < ways; way++) {
        for (uint32_t set = 0; set < sets; set++) {
            SCB_DCISW = (way_shift < 32u ? (way << way_shift) : 0u) | (set << set_shift);
        }
    }
    __asm__ volatile("dsb" ::: "memory");
    SCB_CCR |= SCB_CCR_DC | SCB_CCR_IC;
    __asm__ volatile("dsb\n isb" ::: "memory");
}

void mbgen_board_uart_init(uint32_t bus_hz)
{
    mbgen_board_uart_pins();
    MBGEN_UART_RCC_ENR |= MBGEN_UART_RCC_BIT;
    (void)MBGEN_UART_RCC_ENR;
    USART_CR1 = 0;
    /* 16x oversampling: BRR = USARTDIV = bus clock / baud, rounded. */
    USART_BRR = (bus_hz + MBGEN_BOARD_BAUD / 2u) / MBGEN_BOARD_BAUD;
    USART_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE;
}

void mbgen_board_uart_putc(char c)
{
    if (mbgen_board_wait(&USART_ISR, USART_ISR_TXE, USART_ISR_TXE)) {
        USART_TDR = (uint32_t)(unsigned char)c;
    }
}

void mbgen_board_uart_flush(void)
{
    (void)mbgen_board_wait(&USART_ISR, USART_ISR_TC, USART_ISR_TC);
}
