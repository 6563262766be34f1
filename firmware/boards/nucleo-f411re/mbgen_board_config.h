/* NUCLEO-F411RE: STM32F411RE (Cortex-M4F), 512 KB flash, 128 KB SRAM. */
#ifndef MBGEN_BOARD_CONFIG_H
#define MBGEN_BOARD_CONFIG_H

#define MBGEN_BOARD_NAME "nucleo-f411re"
#define MBGEN_BOARD_PART "STM32F411RE"

/* 100 MHz from the HSI (RM0383 §6.3.2): 16 MHz / M 16 = 1 MHz, x N 400 = 400 MHz VCO,
 * / P 4 = 100 MHz; / Q 9 = 44 MHz (no USB here). */
#define MBGEN_BOARD_SYSCLK_HZ 100000000u
#define MBGEN_PLL_M 16u
#define MBGEN_PLL_N 400u
#define MBGEN_PLL_P 4u
#define MBGEN_PLL_Q 9u
#define MBGEN_PWR_VOS (3u << 14)   /* scale 1, needed above 84 MHz (RM0383 §5.4.1) */
#define MBGEN_FLASH_LATENCY 3u     /* 90 < HCLK <= 100 MHz at 2.7-3.6 V (RM0383 Table 6) */
#define MBGEN_APB1_DIV 2u          /* 50 MHz, the APB1 maximum */
#define MBGEN_APB2_DIV 1u          /* 100 MHz */

/* Console: USART2 (APB1) on PA2 = TX / PA3 = RX, AF7: the ST-LINK's virtual COM port. */
#define MBGEN_UART_BASE 0x40004400u
#define MBGEN_UART_RCC_ENR (*(volatile uint32_t *)0x40023840u) /* RCC_APB1ENR */
#define MBGEN_UART_RCC_BIT (1u << 17)                          /* USART2EN */
#define MBGEN_UART_APB_DIV MBGEN_APB1_DIV
#define MBGEN_UART_GPIO_PORT 0u /* A */
#define MBGEN_UART_TX_PIN 2u
#define MBGEN_UART_RX_PIN 3u
#define MBGEN_UART_AF 7u

#endif
