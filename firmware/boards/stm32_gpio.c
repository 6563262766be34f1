/* STM32F4/F7 GPIO (RM0090 §8.4, RM0385 §6.4: the same block at the same addresses): the
 * console UART's pins in their alternate function. Shared by both family files. */
#include "mbgen_board.h"

#define REG(address) (*(volatile uint32_t *)(address))

#define RCC_AHB1ENR REG(0x40023800u + 0x30u)
#define GPIO_BASE(port) (0x40020000u + 0x400u * (port))
#define GPIO_MODER(port) REG(GPIO_BASE(port) + 0x00u)
#define GPIO_OSPEEDR(port) REG(GPIO_BASE(port) + 0x08u)
#define GPIO_PUPDR(port) REG(GPIO_BASE(port) + 0x0Cu)
#define GPIO_AFR(port, pin) REG(GPIO_BASE(port) + 0x20u + 4u * ((pin) / 8u))

void mbgen_board_uart_pins(void)
{
    RCC_AHB1ENR |= 1u << MBGEN_UART_GPIO_PORT;
    const uint32_t port = MBGEN_UART_GPIO_PORT;
    const uint32_t pins[2] = {MBGEN_UART_TX_PIN, MBGEN_UART_RX_PIN};
    for (int i = 0; i < 2; i++) {
        uint32_t pin = pins[i];
        GPIO_MODER(port) = (GPIO_MODER(port) & ~(3u << (2u * pin))) | (2u << (2u * pin));
        GPIO_OSPEEDR(port) = (GPIO_OSPEEDR(port) & ~(3u << (2u * pin))) | (1u << (2u * pin));
        GPIO_AFR(port, pin) = (GPIO_AFR(port, pin) & ~(0xFu << (4u * (pin % 8u))))
                              | ((uint32_t)MBGEN_UART_AF << (4u * (pin % 8u)));
    }
    /* Pull-up on RX, so an unconnected line reads idle. */
    GPIO_PUPDR(port) = (GPIO_PUPDR(port) & ~(3u << (2u * MBGEN_UART_RX_PIN)))
                       | (1u << (2u * MBGEN_UART_RX_PIN));
}
