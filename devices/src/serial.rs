//! 16550A UART (National Semiconductor PC16550D datasheet).
//!
//! The transmitter is infinitely fast: a byte written to THR reaches the
//! output sink at once, so LSR.THRE and LSR.TEMT always read 1 and the THR
//! empty interrupt re-arms right after each write. Received bytes wait in a
//! receive buffer larger than the chip's 16-byte FIFO so that pasted host
//! input is not lost; the host must respect [`Serial::rx_space`]. The
//! character timeout (datasheet §8.5, "FIFO Interrupt Mode Operation") is
//! approximated: data below the trigger level is reported at once as a
//! timeout interrupt. The interrupt output is not gated by MCR.OUT2 (as in
//! QEMU).

use crate::{log_odd_access, BusDevice, IrqLine, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// The usual base I/O port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// The usual ISA interrupt line of COM1.
pub const COM1_IRQ: u8 = 4;
/// Number of I/O ports the UART occupies.
pub const SERIAL_PORT_COUNT: u64 = 8;
/// Capacity of the receive buffer (the chip's 16-byte FIFO plus host-side
/// buffering for pasted input).
pub const RX_BUFFER_CAPACITY: usize = 4096;
/// Depth of the chip's FIFOs (datasheet §1, "Features").
pub const FIFO_DEPTH: usize = 16;

// Register offsets (datasheet Table II, "Summary of Registers").
const REG_DATA: u64 = 0; // RBR (read) / THR (write) / DLL (DLAB=1)
const REG_IER: u64 = 1; // IER / DLM (DLAB=1)
const REG_IIR_FCR: u64 = 2; // IIR (read) / FCR (write)
const REG_LCR: u64 = 3;
const REG_MCR: u64 = 4;
const REG_LSR: u64 = 5;
const REG_MSR: u64 = 6;
const REG_SCR: u64 = 7;

// Interrupt Enable Register bits (§8.4).
const IER_RX_DATA: u8 = 0x01;
const IER_THR_EMPTY: u8 = 0x02;
const IER_LINE_STATUS: u8 = 0x04;
const IER_MODEM_STATUS: u8 = 0x08;
const IER_MASK: u8 = 0x0f;

// Interrupt Identification Register values (§8.5, Table IV).
const IIR_NONE: u8 = 0x01;
const IIR_LINE_STATUS: u8 = 0x06;
const IIR_RX_DATA: u8 = 0x04;
const IIR_CHAR_TIMEOUT: u8 = 0x0c;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_MODEM_STATUS: u8 = 0x00;
const IIR_FIFOS_ENABLED: u8 = 0xc0;

// FIFO Control Register bits (§8.6).
const FCR_FIFO_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_DMA_MODE: u8 = 0x08;
const FCR_TRIGGER_MASK: u8 = 0xc0;

// Line Control Register (§8.1).
const LCR_DLAB: u8 = 0x80;

// Modem Control Register bits (§8.7).
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

// Line Status Register bits (§8.3).
const LSR_DATA_READY: u8 = 0x01;
const LSR_OVERRUN: u8 = 0x02;
const LSR_PARITY: u8 = 0x04;
const LSR_FRAMING: u8 = 0x08;
const LSR_BREAK: u8 = 0x10;
const LSR_THR_EMPTY: u8 = 0x20;
const LSR_TX_EMPTY: u8 = 0x40;
const LSR_FIFO_ERROR: u8 = 0x80;
const LSR_ERRORS: u8 = LSR_OVERRUN | LSR_PARITY | LSR_FRAMING | LSR_BREAK;

// Modem Status Register bits (§8.8).
const MSR_DELTA_CTS: u8 = 0x01;
const MSR_DELTA_DSR: u8 = 0x02;
const MSR_TRAILING_RI: u8 = 0x04;
const MSR_DELTA_DCD: u8 = 0x08;
const MSR_DELTAS: u8 = 0x0f;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_LINES: u8 = 0xf0;

/// Modem inputs of the (virtual) cable when not in loopback: CTS, DSR and
/// DCD asserted, RI idle.
const EXTERNAL_MODEM_LINES: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// Divisor latch after reset: 9600 baud with the PC's 1.8432 MHz crystal.
const RESET_DIVISOR: u16 = 12;

/// Where transmitted bytes go (the host side of the serial line).
pub type SerialOutput = Box<dyn FnMut(u8) + Send>;

/// Saved state of a [`Serial`]: its registers and the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    divisor: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// LSR error bits latched until the guest reads LSR.
    line_errors: u8,
    msr: u8,
    scr: u8,
    /// FCR bits that persist: FIFO enable, DMA mode, trigger level.
    fcr: u8,
    rx: VecDeque<u8>,
    last_rx: u8,
    /// The THR-empty interrupt is armed (cleared by IIR read or THR write).
    thr_empty_pending: bool,
    irq_level: bool,
}

impl SerialState {
    fn power_on() -> Self {
        Self {
            divisor: RESET_DIVISOR,
            ier: 0,
            lcr: 0,
            mcr: 0,
            line_errors: 0,
            msr: EXTERNAL_MODEM_LINES,
            scr: 0,
            fcr: 0,
            rx: VecDeque::new(),
            last_rx: 0,
            thr_empty_pending: false,
            irq_level: false,
        }
    }
}

/// A 16550A UART with its interrupt line and output sink.
pub struct Serial {
    state: SerialState,
    irq: Arc<dyn IrqLine>,
    out: SerialOutput,
}

impl Serial {
    /// A UART in its reset state (datasheet Table V) that raises `irq` and
    /// sends transmitted bytes to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOutput) -> Self {
        Self {
            state: SerialState::power_on(),
            irq,
            out,
        }
    }

    /// Returns the UART to its reset state (MR pin, datasheet Table V); the
    /// receive buffer is emptied and the interrupt line lowered.
    pub fn reset(&mut self) {
        self.state = SerialState::power_on();
        self.irq.set_level(false);
    }

    /// Queues host→guest bytes on the receive side. Returns how many were
    /// accepted (at most [`Serial::rx_space`]); the rest must be retried.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let accepted = bytes.len().min(self.rx_space());
        self.state.rx.extend(&bytes[..accepted]);
        self.update_irq();
        accepted
    }

    /// How many bytes [`Serial::enqueue_input`] accepts now. Zero in loopback
    /// mode, where the serial input is disconnected (datasheet §8.7).
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            RX_BUFFER_CAPACITY.saturating_sub(self.state.rx.len())
        }
    }

    /// The baud-rate divisor latch (DLM:DLL, datasheet §8.10).
    pub fn divisor(&self) -> u16 {
        self.state.divisor
    }

    /// The line speed for the PC's 1.8432 MHz clock, or 0 for divisor 0.
    pub fn baud_rate(&self) -> u32 {
        match self.state.divisor {
            0 => 0,
            d => 115_200 / u32::from(d),
        }
    }

    fn loopback(&self) -> bool {
        self.state.mcr & MCR_LOOP != 0
    }

    fn dlab(&self) -> bool {
        self.state.lcr & LCR_DLAB != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.state.fcr & FCR_FIFO_ENABLE != 0
    }

    /// Receiver FIFO trigger level (datasheet §8.6, FCR bits 6-7).
    fn trigger_level(&self) -> usize {
        match self.state.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// The highest-priority pending interrupt as an IIR value (§8.5).
    fn pending_interrupt(&self) -> u8 {
        let s = &self.state;
        if s.ier & IER_LINE_STATUS != 0 && s.line_errors & LSR_ERRORS != 0 {
            IIR_LINE_STATUS
        } else if s.ier & IER_RX_DATA != 0 && !s.rx.is_empty() {
            if self.fifo_enabled() && s.rx.len() < self.trigger_level() {
                IIR_CHAR_TIMEOUT
            } else {
                IIR_RX_DATA
            }
        } else if s.ier & IER_THR_EMPTY != 0 && s.thr_empty_pending {
            IIR_THR_EMPTY
        } else if s.ier & IER_MODEM_STATUS != 0 && s.msr & MSR_DELTAS != 0 {
            IIR_MODEM_STATUS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        let level = self.pending_interrupt() != IIR_NONE;
        if level != self.state.irq_level {
            self.state.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The modem input lines as seen in MSR bits 4-7: the cable's lines, or
    /// in loopback the MCR outputs wired back (datasheet §8.7).
    fn modem_lines(&self) -> u8 {
        let mcr = self.state.mcr;
        if mcr & MCR_LOOP == 0 {
            return EXTERNAL_MODEM_LINES;
        }
        let mut lines = 0;
        if mcr & MCR_RTS != 0 {
            lines |= MSR_CTS;
        }
        if mcr & MCR_DTR != 0 {
            lines |= MSR_DSR;
        }
        if mcr & MCR_OUT1 != 0 {
            lines |= MSR_RI;
        }
        if mcr & MCR_OUT2 != 0 {
            lines |= MSR_DCD;
        }
        lines
    }

    /// Recomputes MSR after the modem lines may have changed, setting the
    /// delta bits (§8.8).
    fn update_modem_status(&mut self) {
        let old = self.state.msr & MSR_LINES;
        let new = self.modem_lines();
        let changed = old ^ new;
        let mut deltas = self.state.msr & MSR_DELTAS;
        if changed & MSR_CTS != 0 {
            deltas |= MSR_DELTA_CTS;
        }
        if changed & MSR_DSR != 0 {
            deltas |= MSR_DELTA_DSR;
        }
        if changed & MSR_DCD != 0 {
            deltas |= MSR_DELTA_DCD;
        }
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            deltas |= MSR_TRAILING_RI;
        }
        self.state.msr = new | deltas;
    }

    fn transmit(&mut self, byte: u8) {
        self.state.thr_empty_pending = false;
        self.update_irq();
        if self.loopback() {
            self.receive_looped_back(byte);
        } else {
            (self.out)(byte);
        }
        // The byte left THR at once: THR is empty again (§8.4, ETBEI).
        self.state.thr_empty_pending = true;
        self.update_irq();
    }

    /// A byte arriving through the internal loopback path: the chip's real
    /// receiver, with its 16-byte FIFO (1-byte RBR without FIFOs) and overrun.
    fn receive_looped_back(&mut self, byte: u8) {
        let capacity = if self.fifo_enabled() { FIFO_DEPTH } else { 1 };
        if self.state.rx.len() >= capacity {
            self.state.line_errors |= LSR_OVERRUN;
            if !self.fifo_enabled() {
                // Without FIFOs the new character overwrites RBR.
                self.state.rx.pop_back();
                self.state.rx.push_back(byte);
            }
        } else {
            self.state.rx.push_back(byte);
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        match offset {
            REG_DATA if self.dlab() => self.state.divisor as u8,
            REG_DATA => {
                if let Some(byte) = self.state.rx.pop_front() {
                    self.state.last_rx = byte;
                }
                self.update_irq();
                self.state.last_rx
            }
            REG_IER if self.dlab() => (self.state.divisor >> 8) as u8,
            REG_IER => self.state.ier,
            REG_IIR_FCR => {
                let id = self.pending_interrupt();
                if id == IIR_THR_EMPTY {
                    self.state.thr_empty_pending = false;
                    self.update_irq();
                }
                let fifo_bits = if self.fifo_enabled() {
                    IIR_FIFOS_ENABLED
                } else {
                    0
                };
                id | fifo_bits
            }
            REG_LCR => self.state.lcr,
            REG_MCR => self.state.mcr,
            REG_LSR => {
                let mut lsr = self.state.line_errors | LSR_THR_EMPTY | LSR_TX_EMPTY;
                if !self.state.rx.is_empty() {
                    lsr |= LSR_DATA_READY;
                }
                self.state.line_errors = 0;
                self.update_irq();
                lsr
            }
            REG_MSR => {
                let msr = self.state.msr;
                self.state.msr &= MSR_LINES;
                self.update_irq();
                msr
            }
            REG_SCR => self.state.scr,
            _ => {
                log_odd_access!("serial: read of unknown offset {offset:#x}");
                0xff
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        match offset {
            REG_DATA if self.dlab() => {
                self.state.divisor = (self.state.divisor & 0xff00) | u16::from(value);
            }
            REG_DATA => self.transmit(value),
            REG_IER if self.dlab() => {
                self.state.divisor = (self.state.divisor & 0x00ff) | (u16::from(value) << 8);
            }
            REG_IER => {
                let old = self.state.ier;
                self.state.ier = value & IER_MASK;
                let enabled = self.state.ier & !old;
                if enabled & IER_THR_EMPTY != 0 {
                    // Enabling ETBEI with THR empty raises the interrupt.
                    self.state.thr_empty_pending = true;
                } else if self.state.ier & IER_THR_EMPTY == 0 {
                    self.state.thr_empty_pending = false;
                }
                self.update_irq();
            }
            REG_IIR_FCR => self.write_fcr(value),
            REG_LCR => self.state.lcr = value,
            REG_MCR => {
                self.state.mcr = value & MCR_MASK;
                self.update_modem_status();
                self.update_irq();
            }
            REG_SCR => self.state.scr = value,
            _ => log_odd_access!(
                "serial: write {value:#x} to read-only or unknown offset {offset:#x}"
            ),
        }
    }

    /// FIFO Control Register write (§8.6): changing FCR0 clears both FIFOs;
    /// the other bits are only programmed while FCR0 is 1.
    fn write_fcr(&mut self, value: u8) {
        if (value ^ self.state.fcr) & FCR_FIFO_ENABLE != 0 {
            self.state.rx.clear();
        }
        if value & FCR_FIFO_ENABLE != 0 {
            if value & FCR_CLEAR_RX != 0 {
                self.state.rx.clear();
                self.state.line_errors &= !LSR_FIFO_ERROR;
            }
            // Clearing the transmit FIFO has nothing to do: it is always empty.
            self.state.fcr = value & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK);
        } else {
            self.state.fcr = 0;
        }
        self.update_irq();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let Some((first, rest)) = data.split_first_mut() else {
            return;
        };
        if len > 1 {
            log_odd_access!("serial: {len}-byte read at offset {offset:#x}");
        }
        rest.fill(0xff);
        *first = if offset < SERIAL_PORT_COUNT {
            self.read_register(offset)
        } else {
            log_odd_access!("serial: read beyond the registers at offset {offset:#x}");
            0xff
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if data.len() > 1 {
            log_odd_access!("serial: {}-byte write at offset {offset:#x}", data.len());
        }
        self.write_register(offset, value);
    }
}

impl Snapshot for Serial {
    type State = SerialState;

    fn snapshot(&self) -> SerialState {
        self.state.clone()
    }

    /// Restores the registers and receive buffer. The interrupt line is not
    /// driven: the interrupt controller's own snapshot holds its level.
    fn restore(&mut self, state: SerialState) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spray, RecordingIrq};
    use std::sync::Mutex;

    struct Fixture {
        uart: Serial,
        irq: Arc<RecordingIrq>,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    fn fixture() -> Fixture {
        let irq = RecordingIrq::new();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = sent.clone();
        let uart = Serial::new(irq.clone(), Box::new(move |b| sink.lock().unwrap().push(b)));
        Fixture { uart, irq, sent }
    }

    fn rd(uart: &mut Serial, offset: u64) -> u8 {
        let mut b = [0u8];
        uart.read(offset, &mut b);
        b[0]
    }

    fn wr(uart: &mut Serial, offset: u64, value: u8) {
        uart.write(offset, &[value]);
    }

    #[test]
    fn reset_values_match_the_datasheet() {
        let mut f = fixture();
        let u = &mut f.uart;
        assert_eq!(rd(u, REG_IER), 0);
        assert_eq!(rd(u, REG_IIR_FCR), IIR_NONE);
        assert_eq!(rd(u, REG_LCR), 0);
        assert_eq!(rd(u, REG_MCR), 0);
        assert_eq!(rd(u, REG_LSR), LSR_THR_EMPTY | LSR_TX_EMPTY);
        assert_eq!(rd(u, REG_MSR), EXTERNAL_MODEM_LINES);
        assert_eq!(u.divisor(), 12);
        assert_eq!(u.baud_rate(), 9600);
        assert!(!f.irq.level());
    }

    #[test]
    fn divisor_latch_is_behind_dlab() {
        let mut f = fixture();
        let u = &mut f.uart;
        wr(u, REG_LCR, 0x83);
        wr(u, REG_DATA, 0x01);
        wr(u, REG_IER, 0x00);
        assert_eq!(rd(u, REG_DATA), 0x01);
        assert_eq!(rd(u, REG_IER), 0x00);
        assert_eq!(u.baud_rate(), 115_200);
        wr(u, REG_IER, 0x12);
        assert_eq!(u.divisor(), 0x1201);
        wr(u, REG_LCR, 0x03);
        // With DLAB clear offset 1 is IER again, untouched by the DLM write.
        assert_eq!(rd(u, REG_IER), 0);
        assert!(f.sent.lock().unwrap().is_empty());
        wr(&mut f.uart, REG_LCR, 0x80);
        wr(&mut f.uart, REG_IER, 0);
        wr(&mut f.uart, REG_DATA, 0);
        assert_eq!(f.uart.baud_rate(), 0);
    }

    #[test]
    fn scratch_register_holds_a_byte() {
        let mut f = fixture();
        wr(&mut f.uart, REG_SCR, 0x5a);
        assert_eq!(rd(&mut f.uart, REG_SCR), 0x5a);
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let mut f = fixture();
        for &b in b"hi\n" {
            wr(&mut f.uart, REG_DATA, b);
        }
        assert_eq!(&*f.sent.lock().unwrap(), b"hi\n");
        assert_eq!(
            rd(&mut f.uart, REG_LSR) & (LSR_THR_EMPTY | LSR_TX_EMPTY),
            0x60
        );
    }

    #[test]
    fn wide_accesses_use_the_low_byte() {
        let mut f = fixture();
        f.uart.write(REG_DATA, &[b'A', b'B', 0, 0]);
        assert_eq!(&*f.sent.lock().unwrap(), b"A");
        let mut buf = [0u8; 2];
        f.uart.read(REG_LSR, &mut buf);
        assert_eq!(buf, [0x60, 0xff]);
    }

    #[test]
    fn received_bytes_are_read_in_order() {
        let mut f = fixture();
        assert_eq!(f.uart.enqueue_input(b"ok"), 2);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(rd(&mut f.uart, REG_DATA), b'o');
        assert_eq!(rd(&mut f.uart, REG_DATA), b'k');
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_DATA_READY, 0);
        // An empty RBR keeps returning the last character.
        assert_eq!(rd(&mut f.uart, REG_DATA), b'k');
    }

    #[test]
    fn receive_interrupt_follows_data_ready() {
        let mut f = fixture();
        wr(&mut f.uart, REG_IER, IER_RX_DATA);
        assert!(!f.irq.level());
        f.uart.enqueue_input(b"x");
        assert!(f.irq.level());
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_RX_DATA);
        rd(&mut f.uart, REG_DATA);
        assert!(!f.irq.level());
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_NONE);
    }

    #[test]
    fn irq_is_not_gated_by_out2() {
        let mut f = fixture();
        wr(&mut f.uart, REG_MCR, 0);
        wr(&mut f.uart, REG_IER, IER_RX_DATA);
        f.uart.enqueue_input(b"x");
        assert!(f.irq.level());
    }

    #[test]
    fn fifo_mode_reports_16550a_and_trigger_levels() {
        let mut f = fixture();
        wr(&mut f.uart, REG_IIR_FCR, 0xc7); // enable, clear both, trigger 14
        wr(&mut f.uart, REG_IER, IER_RX_DATA);
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_FIFOS_ENABLED | IIR_NONE);
        f.uart.enqueue_input(&[1, 2, 3]);
        // Below the trigger level: reported as a character timeout.
        assert_eq!(
            rd(&mut f.uart, REG_IIR_FCR),
            IIR_FIFOS_ENABLED | IIR_CHAR_TIMEOUT
        );
        assert!(f.irq.level());
        f.uart.enqueue_input(&[0; 11]);
        assert_eq!(
            rd(&mut f.uart, REG_IIR_FCR),
            IIR_FIFOS_ENABLED | IIR_RX_DATA
        );
        for _ in 0..14 {
            rd(&mut f.uart, REG_DATA);
        }
        assert!(!f.irq.level());
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_FIFOS_ENABLED | IIR_NONE);
    }

    #[test]
    fn trigger_levels_decode() {
        let mut f = fixture();
        for (fcr, level) in [(0x01, 1), (0x41, 4), (0x81, 8), (0xc1, 14)] {
            wr(&mut f.uart, REG_IIR_FCR, fcr);
            assert_eq!(f.uart.trigger_level(), level);
        }
    }

    #[test]
    fn toggling_fifo_enable_clears_the_receive_fifo() {
        let mut f = fixture();
        f.uart.enqueue_input(b"abc");
        wr(&mut f.uart, REG_IIR_FCR, FCR_FIFO_ENABLE);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_DATA_READY, 0);
        f.uart.enqueue_input(b"abc");
        wr(&mut f.uart, REG_IIR_FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_DATA_READY, 0);
        f.uart.enqueue_input(b"abc");
        // Rewriting with FIFOs still enabled and no clear bit keeps data.
        wr(&mut f.uart, REG_IIR_FCR, FCR_FIFO_ENABLE | 0x40);
        assert_eq!(rd(&mut f.uart, REG_DATA), b'a');
        // Bits other than FCR0 are ignored when FCR0 is written as 0.
        wr(&mut f.uart, REG_IIR_FCR, 0xc0);
        assert_eq!(f.uart.state.fcr, 0);
    }

    #[test]
    fn thr_empty_interrupt_behaves_like_hardware() {
        let mut f = fixture();
        // Enabling ETBEI with THR empty raises the interrupt.
        wr(&mut f.uart, REG_IER, IER_THR_EMPTY);
        assert!(f.irq.level());
        assert_eq!(f.irq.take_edges(), 1);
        // Reading IIR with THRE as the source clears it.
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_THR_EMPTY);
        assert!(!f.irq.level());
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_NONE);
        // Writing THR clears it, then the empty THR raises it again: an edge.
        wr(&mut f.uart, REG_DATA, b'a');
        assert!(f.irq.level());
        assert_eq!(f.irq.take_edges(), 1);
        wr(&mut f.uart, REG_DATA, b'b');
        assert_eq!(f.irq.take_edges(), 1, "each THR write gives a new edge");
        // Disabling ETBEI drops it; rewriting IER with it set re-raises it.
        wr(&mut f.uart, REG_IER, 0);
        assert!(!f.irq.level());
        wr(&mut f.uart, REG_IER, IER_THR_EMPTY);
        assert!(f.irq.level());
        // Rewriting IER without a 0→1 change does not re-arm after IIR read.
        rd(&mut f.uart, REG_IIR_FCR);
        wr(&mut f.uart, REG_IER, IER_THR_EMPTY);
        assert!(!f.irq.level());
    }

    #[test]
    fn interrupt_priorities() {
        let mut f = fixture();
        wr(&mut f.uart, REG_MCR, MCR_LOOP);
        wr(&mut f.uart, REG_IER, IER_MASK);
        // Entering loopback changed the modem lines: all four sources pending.
        wr(&mut f.uart, REG_DATA, 1);
        wr(&mut f.uart, REG_DATA, 2); // overrun without FIFOs
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_LINE_STATUS);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_OVERRUN, LSR_OVERRUN);
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_RX_DATA);
        assert_eq!(rd(&mut f.uart, REG_DATA), 2, "RBR overwritten");
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_THR_EMPTY);
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_MODEM_STATUS);
        assert!(f.irq.level());
        rd(&mut f.uart, REG_MSR);
        assert_eq!(rd(&mut f.uart, REG_IIR_FCR), IIR_NONE);
        assert!(!f.irq.level());
    }

    #[test]
    fn loopback_routes_data_and_modem_lines() {
        let mut f = fixture();
        // Linux's probe: loopback with RTS|OUT2 must show CTS|DCD.
        wr(&mut f.uart, REG_MCR, MCR_LOOP | 0x0a);
        assert_eq!(rd(&mut f.uart, REG_MSR) & MSR_LINES, MSR_CTS | MSR_DCD);
        wr(&mut f.uart, REG_MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        let msr = rd(&mut f.uart, REG_MSR);
        assert_eq!(msr & MSR_LINES, MSR_DSR | MSR_RI);
        assert_eq!(
            msr & MSR_DELTAS,
            MSR_DELTA_CTS | MSR_DELTA_DSR | MSR_DELTA_DCD
        );
        // RI falling gives the trailing-edge bit.
        wr(&mut f.uart, REG_MCR, MCR_LOOP | MCR_DTR);
        assert_eq!(rd(&mut f.uart, REG_MSR) & MSR_DELTAS, MSR_TRAILING_RI);
        assert_eq!(
            rd(&mut f.uart, REG_MSR) & MSR_DELTAS,
            0,
            "deltas clear on read"
        );
        // Data loops back and does not reach the sink.
        wr(&mut f.uart, REG_DATA, 0x42);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(rd(&mut f.uart, REG_DATA), 0x42);
        assert!(f.sent.lock().unwrap().is_empty());
        // Host input is held back while the input is disconnected.
        assert_eq!(f.uart.rx_space(), 0);
        assert_eq!(f.uart.enqueue_input(b"zz"), 0);
        wr(&mut f.uart, REG_MCR, 0);
        assert_eq!(rd(&mut f.uart, REG_MSR) & MSR_LINES, EXTERNAL_MODEM_LINES);
        assert_eq!(f.uart.rx_space(), RX_BUFFER_CAPACITY);
    }

    #[test]
    fn loopback_with_fifo_overruns_after_sixteen() {
        let mut f = fixture();
        wr(&mut f.uart, REG_IIR_FCR, FCR_FIFO_ENABLE);
        wr(&mut f.uart, REG_MCR, MCR_LOOP);
        for b in 0..17u8 {
            wr(&mut f.uart, REG_DATA, b);
        }
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_OVERRUN, LSR_OVERRUN);
        assert_eq!(rd(&mut f.uart, REG_LSR) & LSR_OVERRUN, 0, "cleared by read");
        let got: Vec<u8> = (0..16).map(|_| rd(&mut f.uart, REG_DATA)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
    }

    #[test]
    fn receive_buffer_is_bounded() {
        let mut f = fixture();
        let big = vec![b'a'; RX_BUFFER_CAPACITY + 10];
        assert_eq!(f.uart.enqueue_input(&big), RX_BUFFER_CAPACITY);
        assert_eq!(f.uart.rx_space(), 0);
        assert_eq!(f.uart.enqueue_input(b"b"), 0);
        rd(&mut f.uart, REG_DATA);
        assert_eq!(f.uart.rx_space(), 1);
    }

    #[test]
    fn lsr_and_msr_writes_are_ignored() {
        let mut f = fixture();
        wr(&mut f.uart, REG_LSR, 0xff);
        wr(&mut f.uart, REG_MSR, 0xff);
        assert_eq!(rd(&mut f.uart, REG_LSR), 0x60);
        assert_eq!(rd(&mut f.uart, REG_MSR), EXTERNAL_MODEM_LINES);
    }

    #[test]
    fn reset_restores_power_on_state() {
        let mut f = fixture();
        wr(&mut f.uart, REG_IER, IER_THR_EMPTY);
        wr(&mut f.uart, REG_SCR, 9);
        f.uart.enqueue_input(b"abc");
        f.uart.reset();
        assert!(!f.irq.level());
        assert_eq!(rd(&mut f.uart, REG_IER), 0);
        assert_eq!(rd(&mut f.uart, REG_LSR), 0x60);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut f = fixture();
        wr(&mut f.uart, REG_IIR_FCR, 0x81);
        wr(&mut f.uart, REG_IER, IER_RX_DATA);
        wr(&mut f.uart, REG_SCR, 0x77);
        f.uart.enqueue_input(b"data");
        let saved = f.uart.snapshot();
        let mut g = fixture();
        g.uart.restore(saved.clone());
        assert_eq!(g.uart.snapshot(), saved);
        assert_eq!(rd(&mut g.uart, REG_SCR), 0x77);
        assert_eq!(rd(&mut g.uart, REG_IIR_FCR), 0xc0 | IIR_CHAR_TIMEOUT);
        assert_eq!(rd(&mut g.uart, REG_DATA), b'd');
    }

    #[test]
    fn spray_never_panics() {
        let mut f = fixture();
        for seed in 1..6 {
            f.uart.enqueue_input(b"some input");
            spray(&mut f.uart, seed, 50);
        }
    }
}
