/* NUCLEO-F746ZG: STM32F746ZG (Cortex-M7, FPv5 single precision), 1 MB flash, 320 KB SRAM. */
#ifndef MBGEN_BOARD_CONFIG_H
#define MBGEN_BOARD_CONFIG_H

#define MBGEN_BOARD_NAME "nucleo-f746zg"
#define MBGEN_BOARD_PART "STM32F746ZG"
#define MBGEN_BOARD_DWT_LOCKED 1 /* the Cortex-M7 DWT needs its lock access register written */

/* 216 MHz from the HSI (RM0385 §5.3.2): 16 MHz / M 8 = 2 MHz, x N 216 = 432 MHz VCO,
 * / P 2 = 216 MHz (over-drive on); / Q 9 = 48 MHz for USB. */
#define MBGEN_BOARD_SYSCLK_HZ 216000000u
#define MBGEN_PLL_M 8u
#define MBGEN_PLL_N 216u
#define MBGEN_PLL_P 2u
#define MBGEN_PLL_Q 9u
#define MBGEN_PWR_VOS (3u << 14)   /* scale 1 (PWR_CR1.VOS, RM0385 §4.4.1) */
#define MBGEN_FLASH_LATENCY 7u     /* 210 < HCLK <= 216 MHz at 2.7-3.6 V (RM0385 Table 5) */
#define MBGEN_APB1_DIV 4u          /* 54 MHz, the APB1 maximum */
#define MBGEN_APB2_DIV 2u          /* 108 MHz, the APB2 maximum */

/* Console: USART3 (APB1) on PD8 = TX / PD9 = RX, AF7: the ST-LINK's virtual COM port. */
#define MBGEN_UART_BASE 0x40004800u
#define MBGEN_UART_RCC_ENR (*(volatile uint32_t *)0x40023840u) /* RCC_APB1ENR */
#define MBGEN_UART_RCC_BIT (1u << 18)                          /* USART3EN */
#define MBGEN_UART_APB_DIV MBGEN_APB1_DIV
#define MBGEN_UART_GPIO_PORT 3u /* D */
#define MBGEN_UART_TX_PIN 8u
#define MBGEN_UART_RX_PIN 9u
#define MBGEN_UART_AF 7u

#endif
