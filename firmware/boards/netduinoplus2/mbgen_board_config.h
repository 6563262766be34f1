/* Netduino Plus 2: STM32F405RG (Cortex-M4F), 1 MB flash, 192 KB SRAM. Also QEMU's
 * `netduinoplus2` machine, which the mbgen test suite boots this port on. */
#ifndef MBGEN_BOARD_CONFIG_H
#define MBGEN_BOARD_CONFIG_H

#define MBGEN_BOARD_NAME "netduinoplus2"
#define MBGEN_BOARD_PART "STM32F405RG"

/* 168 MHz from the HSI (RM0090 §6.3.2): 16 MHz / M 16 = 1 MHz, x N 336 = 336 MHz VCO,
 * / P 2 = 168 MHz; / Q 7 = 48 MHz for USB. */
#define MBGEN_BOARD_SYSCLK_HZ 168000000u
#define MBGEN_PLL_M 16u
#define MBGEN_PLL_N 336u
#define MBGEN_PLL_P 2u
#define MBGEN_PLL_Q 7u
#define MBGEN_PWR_VOS (1u << 14)   /* scale 1 (PWR_CR.VOS, RM0090 §5.4.1) */
#define MBGEN_FLASH_LATENCY 5u     /* 150 < HCLK <= 168 MHz at 2.7-3.6 V (RM0090 Table 10) */
#define MBGEN_APB1_DIV 4u          /* 42 MHz, the APB1 maximum */
#define MBGEN_APB2_DIV 2u          /* 84 MHz, the APB2 maximum */

/* Console: USART6 (APB2) on PC6 = TX (header D1) and PC7 = RX (header D0), AF8. The board
 * has no USB-serial bridge: wire a 3.3 V USB-serial adapter to D1/D0 and GND. */
#define MBGEN_UART_BASE 0x40011400u
#define MBGEN_UART_RCC_ENR (*(volatile uint32_t *)0x40023844u) /* RCC_APB2ENR */
#define MBGEN_UART_RCC_BIT (1u << 5)                           /* USART6EN */
#define MBGEN_UART_APB_DIV MBGEN_APB2_DIV
#define MBGEN_UART_GPIO_PORT 2u /* C */
#define MBGEN_UART_TX_PIN 6u
#define MBGEN_UART_RX_PIN 7u
#define MBGEN_UART_AF 8u

#endif
