//! The simfota card applet on an Arm Cortex-M4: firmware for the Arm MPS2 AN386 board
//! (`qemu-system-arm -M mps2-an386`), answering the serial link of `simfota_card_firmware`
//! on UART0 (CMSDK APB UART at `0x4000_4000`).
//!
//! Build: `cargo build --locked --release --target thumbv7em-none-eabihf -p
//! simfota-card-firmware`. Run: `qemu-system-arm -M mps2-an386 -display none -monitor none
//! -serial stdio -semihosting-config enable=on,target=native -kernel
//! target/thumbv7em-none-eabihf/release/simfota-card-firmware` (docs/card.md, "The applet on
//! a Cortex-M"). On the host this binary only says so.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "simfota-card-firmware runs on an Arm Cortex-M4: build it with `cargo build --release \
         --target thumbv7em-none-eabihf -p simfota-card-firmware` and start it with \
         `qemu-system-arm -M mps2-an386` (see docs/card.md, \"The applet on a Cortex-M\")"
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod firmware {
    use cortex_m_rt::entry;
    use simfota_card::CardMemory;
    use simfota_card_firmware::{Buffers, FirmwareApplet, STATUS_STOPPED, send, serve};

    use crate::hw;

    #[entry]
    fn main() -> ! {
        // cortex-m-rt turns these into `&'static mut`: the card image, the applet and the
        // buffers live in .bss, not on the stack.
        static mut MEMORY: CardMemory = CardMemory::new();
        static mut APPLET: Option<FirmwareApplet<'static>> = None;
        static mut BUFFERS: Buffers = Buffers::new();

        let mut uart = hw::Uart::init();
        hw::paint_stack();
        serve(&mut uart, MEMORY, APPLET, BUFFERS, hw::measure_stack);
        hw::exit(true)
    }

    /// A panic is answered on the link (status "stopped", with its message), then the board
    /// stops with a failure status.
    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        let mut msg = Message {
            buf: [0; 256],
            len: 0,
        };
        let _ = core::fmt::write(&mut msg, format_args!("{info}"));
        send(&mut hw::Uart::init(), STATUS_STOPPED, &msg.buf[..msg.len]);
        hw::exit(false)
    }

    /// A panic message, cut at 256 bytes.
    struct Message {
        buf: [u8; 256],
        len: usize,
    }

    impl core::fmt::Write for Message {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
}

/// The board: UART0, the stack, semihosting. The only `unsafe` of the crate.
#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod hw {
    use core::ptr::{read_volatile, write_volatile};

    use simfota_card_firmware::{Link, StackUse};

    /// CMSDK APB UART0 of the MPS2 FPGA images (AN385/AN386 memory map).
    const UART0: usize = 0x4000_4000;
    const DATA: usize = 0x00;
    const STATE: usize = 0x04;
    const CTRL: usize = 0x08;
    const BAUDDIV: usize = 0x10;
    const STATE_TX_FULL: u32 = 1 << 0;
    const STATE_RX_FULL: u32 = 1 << 1;
    const CTRL_TX_EN: u32 = 1 << 0;
    const CTRL_RX_EN: u32 = 1 << 1;

    fn reg(offset: usize) -> *mut u32 {
        (UART0 + offset) as *mut u32
    }

    /// UART0, polled.
    pub struct Uart;

    impl Uart {
        /// Enables transmit and receive. The divider is the smallest the CMSDK UART accepts
        /// (16); QEMU does not pace the line by it.
        pub fn init() -> Self {
            // SAFETY: UART0's registers, at their documented addresses on this board.
            unsafe {
                write_volatile(reg(BAUDDIV), 16);
                write_volatile(reg(CTRL), CTRL_TX_EN | CTRL_RX_EN);
            }
            Uart
        }
    }

    impl Link for Uart {
        fn read(&mut self) -> u8 {
            // SAFETY: as in `init`.
            unsafe {
                while read_volatile(reg(STATE)) & STATE_RX_FULL == 0 {}
                read_volatile(reg(DATA)) as u8
            }
        }

        fn write(&mut self, byte: u8) {
            // SAFETY: as in `init`.
            unsafe {
                while read_volatile(reg(STATE)) & STATE_TX_FULL != 0 {}
                write_volatile(reg(DATA), u32::from(byte));
            }
        }
    }

    /// The pattern unwritten stack words keep.
    const PAINT: u32 = 0x5AFE_C0DE;
    /// Words left unpainted just below the live stack pointer (the painting code's own frame
    /// and what an interrupt would push).
    const MARGIN: usize = 64;
    /// How far below the top of RAM the stack is painted and measured: painting all 4 MiB
    /// after every command would cost more than the command. A stack that reaches the
    /// bottom of the window shows as 0 bytes untouched.
    const WINDOW: usize = 64 * 1024;

    unsafe extern "C" {
        /// cortex-m-rt: first free address after .data, .bss and .uninit, the lowest the
        /// stack may reach.
        static __sheap: u32;
        /// cortex-m-rt: the initial stack pointer, the top of RAM.
        static _stack_start: u32;
    }

    fn stack_pointer() -> usize {
        let sp: usize;
        // SAFETY: reads the stack pointer, no memory access.
        unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
        sp
    }

    fn bottom() -> usize {
        (&raw const __sheap) as usize
    }

    fn top() -> usize {
        (&raw const _stack_start) as usize
    }

    /// The lowest painted word: the window's bottom, or the end of the statics.
    fn floor() -> usize {
        ((bottom() + 3) & !3).max(top() - WINDOW)
    }

    /// Fills the free stack in the window (up to just below the live stack pointer) with
    /// the pattern.
    #[inline(never)]
    pub fn paint_stack() {
        let end = (stack_pointer() - MARGIN * 4) & !3;
        let mut at = floor();
        while at < end {
            // SAFETY: free stack below the live frames, above every static.
            unsafe { write_volatile(at as *mut u32, PAINT) };
            at += 4;
        }
    }

    /// How deep the stack went since it was painted, then paints it again.
    pub fn measure_stack() -> StackUse {
        let start = floor();
        let mut at = start;
        // SAFETY: reads the painted area, from its bottom up to the first word written.
        while at < top() && unsafe { read_volatile(at as *const u32) } == PAINT {
            at += 4;
        }
        let used = StackUse {
            high_water: (top() - at) as u32,
            untouched: (at - start) as u32,
        };
        paint_stack();
        used
    }

    /// Stops the board through semihosting SYS_EXIT (QEMU exits: status 0 when `success`,
    /// 1 otherwise).
    pub fn exit(success: bool) -> ! {
        // ADP_Stopped_ApplicationExit / ADP_Stopped_RunTimeErrorUnknown (Arm semihosting
        // specification, SYS_EXIT on AArch32: the reason code in r1).
        let reason: u32 = if success { 0x2_0026 } else { 0x2_0023 };
        loop {
            // SAFETY: the semihosting call traps to the debugger (QEMU); it reads r0-r1 only.
            unsafe {
                core::arch::asm!("bkpt #0xab", in("r0") 0x18u32, in("r1") reason, options(nostack));
            }
        }
    }
}
