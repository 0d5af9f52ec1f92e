//! Intel 8254 programmable interval timer, and the PC's system control port B
//! (port 0x61) that gates counter 2 and reads its output.
//!
//! Section references are to the Intel 8254 datasheet (order number 231164).
//! Counters are not stepped: each counter remembers when its current counting
//! run started, and values and outputs are computed from the [`Clock`] when
//! asked. [`Pit::poll`] turns rising edges of counter 0's OUT into pulses on
//! IRQ0 — at most one per call, since the interrupt controller's request
//! latch merges edges the guest has not acknowledged yet — and returns the
//! time of the next edge.
//!
//! Simplifications: a count is loaded on the write itself rather than on the
//! next CLK pulse, and mode 3 with an odd count uses the exact (N+1)/2 and
//! (N-1)/2 half-periods.

use crate::{log_odd_access, BusDevice, Clock, IrqLine, Snapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};

/// Base I/O port of the 8254 (counters 0-2 at +0..+2, control word at +3).
pub const PIT_PORT: u16 = 0x40;
/// Number of I/O ports the 8254 occupies.
pub const PIT_PORT_COUNT: u64 = 4;
/// I/O port of system control port B (speaker gate, counter 2 output).
pub const PORT_B: u16 = 0x61;
/// The PC's counter input clock: 1.193182 MHz.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// The ISA interrupt line counter 0 drives.
pub const PIT_IRQ: u8 = 0;
/// Poll deadlines are never closer than this, so a guest programming a tiny
/// period cannot make the host spin.
pub const MIN_POLL_INTERVAL_NS: u64 = 10_000;
/// Period of the DRAM refresh toggle seen in port B bit 4 (15.085 µs).
const REFRESH_TOGGLE_NS: u64 = 15_085;

const NS_PER_SEC: u64 = 1_000_000_000;

// Port B bits (IBM PC/AT Technical Reference, "System Control Port B").
const PORT_B_TIMER2_GATE: u8 = 0x01;
const PORT_B_WRITABLE: u8 = 0x0f;
const PORT_B_REFRESH: u8 = 0x10;
const PORT_B_TIMER2_OUT: u8 = 0x20;

/// Counter ticks elapsed at `ns`.
fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_FREQUENCY_HZ) / u128::from(NS_PER_SEC)) as u64
}

/// The first nanosecond at which `ticks` ticks have elapsed.
fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQUENCY_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn bcd_to_binary(raw: u16) -> u32 {
    (0..4).fold(0u32, |acc, digit| {
        let nibble = u32::from((raw >> (12 - 4 * digit)) & 0xf);
        acc * 10 + nibble
    })
}

fn binary_to_bcd(value: u32) -> u16 {
    let value = value % 10_000;
    (0..4).fold(0u16, |acc, digit| {
        let d = (value / 10u32.pow(digit)) % 10;
        acc | ((d as u16) << (4 * digit))
    })
}

/// How a counter's 16-bit values go through its 8-bit port (control word
/// bits RW1-RW0, datasheet "Control Word Format").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Access {
    LowByte,
    HighByte,
    LowThenHigh,
}

impl Access {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits & 3 {
            1 => Some(Self::LowByte),
            2 => Some(Self::HighByte),
            3 => Some(Self::LowThenHigh),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::LowByte => 1,
            Self::HighByte => 2,
            Self::LowThenHigh => 3,
        }
    }
}

/// A count latched by a counter latch or read-back command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LatchedCount {
    value: u16,
    high_byte_next: bool,
}

/// One 8254 counter. Time is in counter ticks of the [`Clock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    /// Mode bits M2-M0 as programmed (6 and 7 act as 2 and 3).
    mode_bits: u8,
    bcd: bool,
    access: Access,
    /// The count register (CR) as a count: 1..=65536 (or 10000 in BCD).
    count_register: u32,
    /// CR holds a count written since the last control word.
    has_count: bool,
    /// Low byte of a two-byte count being written.
    pending_low_byte: Option<u8>,
    /// Next live read returns the high byte (two-byte access).
    read_high_byte_next: bool,
    latched_count: Option<LatchedCount>,
    latched_status: Option<u8>,
    null_count: bool,
    gate: bool,
    /// A counting sequence is in progress (the CE was loaded).
    triggered: bool,
    /// The count of the current sequence.
    active_count: u32,
    /// Ticks counted by the current sequence before `run_start`.
    counted_before: u64,
    /// Tick at which the current run of counting began.
    run_start: u64,
    /// Modes 2 and 3: counted-tick position at which CR replaces the count.
    reload_at: Option<u64>,
    /// Counter value shown while no sequence runs.
    idle_value: u16,
    /// Last tick up to which rising edges of OUT have been accounted.
    synced_tick: u64,
}

impl Counter {
    /// Power-on state (undefined in the datasheet): mode 3, no count, OUT
    /// high, so the first programming of a counter is not an edge.
    fn new(now: u64) -> Self {
        Self {
            mode_bits: 3,
            bcd: false,
            access: Access::LowThenHigh,
            count_register: 0x10000,
            has_count: false,
            pending_low_byte: None,
            read_high_byte_next: false,
            latched_count: None,
            latched_status: None,
            null_count: true,
            gate: true,
            triggered: false,
            active_count: 0x10000,
            counted_before: 0,
            run_start: now,
            reload_at: None,
            idle_value: 0,
            synced_tick: now,
        }
    }

    fn mode(&self) -> u8 {
        match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    /// The counter's wrap-around modulus.
    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x10000
        }
    }

    /// Counting proceeds now: a sequence is loaded and the gate allows it
    /// (modes 1 and 5 use the gate only as a trigger).
    fn running(&self) -> bool {
        self.triggered && (self.gate || matches!(self.mode(), 1 | 5))
    }

    /// Ticks counted by the current sequence at tick `t`.
    fn counted(&self, t: u64) -> u64 {
        if self.running() {
            self.counted_before + t.saturating_sub(self.run_start)
        } else {
            self.counted_before
        }
    }

    /// The tick at which the current run reaches `counted` ticks.
    fn tick_of(&self, counted: u64) -> u64 {
        self.run_start
            .saturating_add(counted.saturating_sub(self.counted_before))
    }

    fn high_half(count: u64) -> u64 {
        count.div_ceil(2)
    }

    /// OUT at tick `t` (datasheet "Mode Definitions").
    fn out(&self, t: u64) -> bool {
        let mode = self.mode();
        if !self.triggered {
            return mode != 0;
        }
        let c = self.counted(t);
        let n = u64::from(self.active_count);
        match mode {
            0 | 1 => c >= n,
            2 => !self.gate || n == 1 || c % n != n - 1,
            3 => !self.gate || c % n < Self::high_half(n),
            _ => c != n,
        }
    }

    /// The counting element's value at tick `t`, in binary.
    fn value(&self, t: u64) -> u16 {
        if !self.triggered {
            return self.idle_value;
        }
        let c = self.counted(t);
        let n = u64::from(self.active_count);
        let m = self.modulus();
        let value = match self.mode() {
            2 => n - c % n,
            3 => {
                let phase = c % n;
                let high = Self::high_half(n);
                let (half_pos, first_half) = if phase < high {
                    (phase, true)
                } else {
                    (phase - high, false)
                };
                if half_pos == 0 {
                    n
                } else if n % 2 == 0 {
                    n - 2 * half_pos
                } else if first_half {
                    // Odd count: the first clock after loading takes 1 ...
                    n + 1 - 2 * half_pos
                } else {
                    // ... and the first clock after the reload takes 3.
                    n - 1 - 2 * half_pos
                }
            }
            _ => (n + m - c % m) % m,
        };
        (value % m) as u16
    }

    /// The first tick after `t` at which OUT rises, if any is scheduled.
    fn next_rising_edge_after(&self, t: u64) -> Option<u64> {
        if !self.running() {
            return None;
        }
        let c = self.counted(t);
        let n = u64::from(self.active_count);
        let edge = match self.mode() {
            0 | 1 => (c < n).then_some(n)?,
            4 | 5 => (c < n + 1).then_some(n + 1)?,
            _ => (c / n + 1) * n,
        };
        let edge = match self.reload_at {
            // Mode 3 reloading at the end of a high half: the new count's
            // low half runs first.
            Some(reload) if edge > reload => {
                let new = u64::from(self.count_register);
                reload + (new - Self::high_half(new))
            }
            _ => edge,
        };
        Some(self.tick_of(edge))
    }

    /// Accounts for time up to `now`: reports whether OUT rose since the
    /// last call, and applies a pending mode 2/3 reload whose time has come.
    fn sync(&mut self, now: u64) -> bool {
        let rose = now > self.synced_tick
            && self
                .next_rising_edge_after(self.synced_tick)
                .is_some_and(|edge| edge <= now);
        if let Some(reload) = self.reload_at {
            if self.counted(now) >= reload {
                let old = u64::from(self.active_count);
                let ended_high_half = self.mode() == 3 && reload % old != 0;
                let start = self.tick_of(reload);
                self.active_count = self.count_register;
                let new = u64::from(self.active_count);
                self.counted_before = if ended_high_half {
                    Self::high_half(new)
                } else {
                    0
                };
                self.run_start = start;
                self.reload_at = None;
                self.null_count = false;
            }
        }
        self.synced_tick = self.synced_tick.max(now);
        rose
    }

    /// Starts a new counting sequence with CR at tick `now`.
    fn start_sequence(&mut self, now: u64) {
        self.triggered = true;
        self.active_count = self.count_register;
        self.counted_before = 0;
        self.run_start = now;
        self.reload_at = None;
        self.null_count = false;
    }

    fn stop_sequence(&mut self, now: u64) {
        self.idle_value = self.value(now);
        self.triggered = false;
        self.reload_at = None;
    }

    /// A control word for this counter (not a latch command).
    fn write_control(&mut self, now: u64, access: Access, mode_bits: u8, bcd: bool) {
        self.stop_sequence(now);
        self.access = access;
        self.mode_bits = mode_bits;
        self.bcd = bcd;
        self.has_count = false;
        self.null_count = true;
        self.pending_low_byte = None;
        self.read_high_byte_next = false;
        self.latched_count = None;
        self.latched_status = None;
    }

    fn write_count_byte(&mut self, now: u64, byte: u8) {
        let raw = match self.access {
            Access::LowByte => u16::from(byte),
            Access::HighByte => u16::from(byte) << 8,
            Access::LowThenHigh => match self.pending_low_byte.take() {
                Some(low) => u16::from(low) | (u16::from(byte) << 8),
                None => {
                    self.pending_low_byte = Some(byte);
                    if self.mode() == 0 {
                        // Mode 0: writing the first byte stops counting and
                        // sets OUT low at once.
                        self.stop_sequence(now);
                    }
                    return;
                }
            },
        };
        self.load_count(now, raw);
    }

    /// A complete count written to CR (datasheet "Write Operations" and the
    /// per-mode "new count" rules).
    fn load_count(&mut self, now: u64, raw: u16) {
        let count = if self.bcd {
            bcd_to_binary(raw)
        } else {
            u32::from(raw)
        };
        self.count_register = if count == 0 {
            self.modulus() as u32
        } else {
            count
        };
        self.null_count = true;
        let first_count = !self.has_count;
        self.has_count = true;
        match self.mode() {
            0 | 4 => self.start_sequence(now),
            2 | 3 if first_count || !self.triggered => self.start_sequence(now),
            2 | 3 if self.running() => {
                let c = self.counted(now);
                let n = u64::from(self.active_count);
                let period_start = c / n * n;
                let high = Self::high_half(n);
                self.reload_at = Some(if self.mode() == 3 && c - period_start < high {
                    period_start + high
                } else {
                    period_start + n
                });
            }
            // Modes 2/3 with the gate low load on the gate's rising edge;
            // modes 1/5 on the next trigger.
            _ => {}
        }
    }

    fn set_gate(&mut self, now: u64, level: bool) {
        if level == self.gate {
            return;
        }
        match self.mode() {
            0 | 4 => {
                // The gate suspends counting.
                self.counted_before = self.counted(now);
                self.gate = level;
                self.run_start = now;
            }
            _ => {
                if !level {
                    self.counted_before = self.counted(now);
                }
                self.gate = level;
                if level && self.has_count {
                    // Rising edge: trigger (modes 1, 5) or reload (2, 3).
                    self.start_sequence(now);
                }
            }
        }
    }

    fn status(&self, now: u64) -> u8 {
        u8::from(self.out(now)) << 7
            | u8::from(self.null_count) << 6
            | self.access.bits() << 4
            | (self.mode_bits & 7) << 1
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(LatchedCount {
                value: self.encoded_value(now),
                high_byte_next: self.access == Access::HighByte,
            });
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(now));
        }
    }

    fn encoded_value(&self, now: u64) -> u16 {
        let value = self.value(now);
        if self.bcd {
            binary_to_bcd(u32::from(value))
        } else {
            value
        }
    }

    /// A read of the counter's port (datasheet "Read Operations").
    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some(mut latch) = self.latched_count {
            let [low, high] = latch.value.to_le_bytes();
            return match self.access {
                Access::LowThenHigh if !latch.high_byte_next => {
                    latch.high_byte_next = true;
                    self.latched_count = Some(latch);
                    low
                }
                Access::LowByte => {
                    self.latched_count = None;
                    low
                }
                _ => {
                    self.latched_count = None;
                    high
                }
            };
        }
        let [low, high] = self.encoded_value(now).to_le_bytes();
        match self.access {
            Access::LowByte => low,
            Access::HighByte => high,
            Access::LowThenHigh => {
                self.read_high_byte_next = !self.read_high_byte_next;
                if self.read_high_byte_next {
                    low
                } else {
                    high
                }
            }
        }
    }
}

/// Saved state of a [`Pit`]: the three counters and port B's latch. Times
/// are ticks of the machine [`Clock`], so restore into a machine whose clock
/// continues from the saved time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    counters: [Counter; 3],
    port_b: u8,
}

/// The 8254 timer with counter 0 on IRQ0 and counter 2 behind port B.
pub struct Pit {
    counters: [Counter; 3],
    /// Port B bits 0-3 as last written.
    port_b: u8,
    clock: Arc<dyn Clock>,
    irq: Arc<dyn IrqLine>,
}

impl Pit {
    /// An 8254 counting `clock` time and pulsing `irq` (IRQ0) on rising
    /// edges of counter 0's OUT. Counters start unprogrammed in mode 0;
    /// counter 2's gate (port B bit 0) starts low.
    pub fn new(clock: Arc<dyn Clock>, irq: Arc<dyn IrqLine>) -> Self {
        let now = ns_to_ticks(clock.now_ns());
        let mut counters = [Counter::new(now), Counter::new(now), Counter::new(now)];
        counters[2].gate = false;
        Self {
            counters,
            port_b: 0,
            clock,
            irq,
        }
    }

    /// Returns the timer to its power-on state.
    pub fn reset(&mut self) {
        let now = self.now();
        self.counters = [Counter::new(now), Counter::new(now), Counter::new(now)];
        self.counters[2].gate = false;
        self.port_b = 0;
    }

    fn now(&self) -> u64 {
        ns_to_ticks(self.clock.now_ns())
    }

    /// Brings every counter up to now, pulsing IRQ0 if counter 0's OUT rose.
    fn sync(&mut self, now: u64) {
        let [counter0, counter1, counter2] = &mut self.counters;
        if counter0.sync(now) {
            self.irq.pulse();
        }
        counter1.sync(now);
        counter2.sync(now);
    }

    /// Runs `change` on counter `index` at `now` and pulses IRQ0 if it made
    /// counter 0's OUT rise (e.g. a new control word sets OUT high).
    fn change_counter(&mut self, index: usize, now: u64, change: impl FnOnce(&mut Counter)) {
        self.sync(now);
        let Some(counter) = self.counters.get_mut(index) else {
            return;
        };
        let before = counter.out(now);
        change(counter);
        let after = counter.out(now);
        if index == 0 && !before && after {
            self.irq.pulse();
        }
    }

    /// Delivers due IRQ0 edges and returns when to call again, in clock
    /// nanoseconds (`None`: counter 0 has no edge scheduled). Call it
    /// regularly and after every guest access to the timer's ports, since a
    /// new count moves the deadline. Any number of elapsed periods yield a
    /// single pulse (the PIC would merge them anyway).
    pub fn poll(&mut self) -> Option<u64> {
        let now_ns = self.clock.now_ns();
        let now = ns_to_ticks(now_ns);
        self.sync(now);
        self.counters[0]
            .next_rising_edge_after(now)
            .map(|edge| ticks_to_ns(edge).max(now_ns.saturating_add(MIN_POLL_INTERVAL_NS)))
    }

    /// Sets the GATE input of counter `index` (0-2); the PC ties gates 0 and
    /// 1 high and drives gate 2 from port B bit 0.
    pub fn set_gate(&mut self, index: usize, level: bool) {
        let now = self.now();
        self.change_counter(index, now, |counter| counter.set_gate(now, level));
    }

    /// The OUT pin of counter `index` (0-2) now; false for other indices.
    pub fn output(&mut self, index: usize) -> bool {
        let now = self.now();
        self.sync(now);
        self.counters.get(index).is_some_and(|c| c.out(now))
    }

    /// Reads port B (0x61): bits 0-3 as written, bit 4 the refresh toggle,
    /// bit 5 counter 2's OUT, bits 6-7 (parity and channel check) clear.
    pub fn read_port_b(&mut self) -> u8 {
        let now_ns = self.clock.now_ns();
        let refresh = if (now_ns / REFRESH_TOGGLE_NS) % 2 == 1 {
            PORT_B_REFRESH
        } else {
            0
        };
        let out2 = if self.output(2) { PORT_B_TIMER2_OUT } else { 0 };
        self.port_b | refresh | out2
    }

    /// Writes port B (0x61): bit 0 gates counter 2, bit 1 enables the
    /// speaker (silent here), bits 2-3 are the check enables; 4-7 read-only.
    pub fn write_port_b(&mut self, value: u8) {
        self.port_b = value & PORT_B_WRITABLE;
        self.set_gate(2, value & PORT_B_TIMER2_GATE != 0);
    }

    /// The speaker is enabled and driven by counter 2 (port B bits 0-1).
    pub fn speaker_enabled(&self) -> bool {
        self.port_b & 3 == 3
    }

    /// A write to the control word register (datasheet "Control Word
    /// Format", "Counter Latch Command", "Read-Back Command").
    fn write_control_word(&mut self, value: u8) {
        let now = self.now();
        self.sync(now);
        let select = value >> 6;
        if select == 3 {
            let latch_count = value & 0x20 == 0;
            let latch_status = value & 0x10 == 0;
            for (index, counter) in self.counters.iter_mut().enumerate() {
                if value & (2 << index) != 0 {
                    if latch_status {
                        counter.latch_status(now);
                    }
                    if latch_count {
                        counter.latch_count(now);
                    }
                }
            }
            return;
        }
        let index = usize::from(select);
        match Access::from_bits(value >> 4) {
            None => {
                if let Some(counter) = self.counters.get_mut(index) {
                    counter.latch_count(now);
                }
            }
            Some(access) => {
                let mode_bits = (value >> 1) & 7;
                let bcd = value & 1 != 0;
                self.change_counter(index, now, |counter| {
                    counter.write_control(now, access, mode_bits, bcd)
                });
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        let now = self.now();
        self.sync(now);
        match offset {
            0..=2 => self.counters[offset as usize].read(now),
            _ => {
                log_odd_access!("8254: read of offset {offset:#x}");
                0xff
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        match offset {
            0..=2 => {
                let now = self.now();
                self.change_counter(offset as usize, now, |counter| {
                    counter.write_count_byte(now, value)
                });
            }
            3 => self.write_control_word(value),
            _ => log_odd_access!("8254: write {value:#x} to offset {offset:#x}"),
        }
    }
}

impl BusDevice for Pit {
    /// Counters at offsets 0-2; the control word register (offset 3) is
    /// write-only and reads all ones. Wider accesses use the low byte.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = self.read_register(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.write_register(offset, value);
        }
    }
}

impl Snapshot for Pit {
    type State = PitState;

    fn snapshot(&self) -> PitState {
        PitState {
            counters: self.counters.clone(),
            port_b: self.port_b,
        }
    }

    fn restore(&mut self, state: PitState) {
        self.counters = state.counters;
        self.port_b = state.port_b & PORT_B_WRITABLE;
    }
}

fn lock(pit: &Mutex<Pit>) -> MutexGuard<'_, Pit> {
    pit.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// System control port B (0x61, one port) as a [`BusDevice`] over a shared
/// [`Pit`].
pub struct PortB {
    pit: Arc<Mutex<Pit>>,
}

impl PortB {
    /// Port B of `pit`.
    pub fn new(pit: Arc<Mutex<Pit>>) -> Self {
        Self { pit }
    }
}

impl BusDevice for PortB {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.first_mut()) {
            (0, Some(first)) => *first = lock(&self.pit).read_port_b(),
            (_, Some(_)) => log_odd_access!("port B: read at offset {offset:#x}"),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&value)) => lock(&self.pit).write_port_b(value),
            (_, Some(_)) => log_odd_access!("port B: write at offset {offset:#x}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spray, RecordingIrq, XorShift};
    use crate::ManualClock;

    struct Fixture {
        pit: Pit,
        clock: Arc<ManualClock>,
        irq: Arc<RecordingIrq>,
    }

    fn fixture() -> Fixture {
        let clock = Arc::new(ManualClock::default());
        clock.set(1_000_000_000);
        let irq = RecordingIrq::new();
        let pit = Pit::new(clock.clone(), irq.clone());
        Fixture { pit, clock, irq }
    }

    impl Fixture {
        fn wr(&mut self, offset: u64, value: u8) {
            self.pit.write(offset, &[value]);
        }
        fn rd(&mut self, offset: u64) -> u8 {
            let mut b = [0];
            self.pit.read(offset, &mut b);
            b[0]
        }
        /// Programs counter `index` with a control word and a 16-bit count.
        fn program(&mut self, index: u8, mode: u8, count: u16) {
            self.wr(3, index << 6 | 0x30 | mode << 1);
            self.wr(u64::from(index), count as u8);
            self.wr(u64::from(index), (count >> 8) as u8);
        }
        fn latch_read(&mut self, index: u8) -> u16 {
            self.wr(3, index << 6);
            let low = self.rd(u64::from(index));
            let high = self.rd(u64::from(index));
            u16::from_le_bytes([low, high])
        }
        /// Advances the clock by exactly `ticks` counter ticks from an
        /// on-tick starting time.
        fn advance_ticks(&self, ticks: u64) {
            let now = ns_to_ticks(self.clock.now_ns());
            self.clock.set(ticks_to_ns(now + ticks));
        }
    }

    #[test]
    fn tick_conversions_round_trip() {
        for ticks in [0, 1, 2, 1193, 1_193_182, 10_000_000_000] {
            assert_eq!(ns_to_ticks(ticks_to_ns(ticks)), ticks);
            assert!(ns_to_ticks(ticks_to_ns(ticks).saturating_sub(1)) < ticks.max(1));
        }
        assert_eq!(ns_to_ticks(NS_PER_SEC), PIT_FREQUENCY_HZ);
    }

    #[test]
    fn bcd_helpers() {
        assert_eq!(bcd_to_binary(0x1234), 1234);
        assert_eq!(bcd_to_binary(0x9999), 9999);
        assert_eq!(bcd_to_binary(0xffff), 16665);
        assert_eq!(binary_to_bcd(1234), 0x1234);
        assert_eq!(binary_to_bcd(10_000), 0);
    }

    #[test]
    fn mode2_counts_down_and_reloads() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 2, 1000);
        assert_eq!(f.latch_read(0), 1000);
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 999);
        f.advance_ticks(998);
        assert_eq!(f.latch_read(0), 1);
        assert!(!f.pit.output(0), "OUT low for the count of 1");
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 1000);
        assert!(f.pit.output(0));
    }

    #[test]
    fn mode2_periodic_irq_and_deadlines() {
        let mut f = fixture();
        f.advance_ticks(0);
        let start = f.clock.now_ns();
        f.program(0, 2, 11932); // ~10 ms
        let first = f.pit.poll().expect("periodic mode has a deadline");
        let period_ns = ticks_to_ns(ns_to_ticks(start) + 11932) - start;
        assert_eq!(first, start + period_ns);
        assert_eq!(f.irq.take_edges(), 0);
        f.clock.set(first - 1);
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 0);
        f.clock.set(first);
        let second = f.pit.poll().unwrap();
        assert_eq!(f.irq.take_edges(), 1);
        assert!(!f.irq.level(), "IRQ0 is pulsed");
        assert!((second - first).abs_diff(period_ns) <= 1);
        // Far behind: one pulse, no per-period loop, deadline in the future.
        f.clock.advance(3_600 * NS_PER_SEC);
        let next = f.pit.poll().unwrap();
        assert_eq!(f.irq.take_edges(), 1);
        assert!(next > f.clock.now_ns());
        assert!(next - f.clock.now_ns() <= period_ns + 1);
    }

    #[test]
    fn port_accesses_deliver_due_edges() {
        let mut f = fixture();
        f.program(0, 2, 100);
        f.advance_ticks(150);
        f.rd(0);
        assert_eq!(f.irq.take_edges(), 1);
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 0, "edge delivered only once");
    }

    #[test]
    fn new_count_in_mode2_waits_for_the_period_end() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 2, 1000);
        f.advance_ticks(400);
        f.wr(0, 0xf4);
        f.wr(0, 0x01); // 500
        assert_eq!(f.latch_read(0), 600, "current period continues");
        let deadline = f.pit.poll().unwrap();
        assert_eq!(ns_to_ticks(deadline), ns_to_ticks(f.clock.now_ns()) + 600);
        f.advance_ticks(600);
        assert_eq!(f.latch_read(0), 500);
        assert_eq!(f.irq.take_edges(), 1);
        f.advance_ticks(499);
        assert_eq!(f.latch_read(0), 1);
        f.advance_ticks(1);
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 1);
    }

    #[test]
    fn mode3_square_wave() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 3, 10);
        assert!(f.pit.output(0));
        assert_eq!(f.latch_read(0), 10);
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 8, "decrements by two");
        f.advance_ticks(4);
        assert!(!f.pit.output(0), "low half");
        assert_eq!(f.latch_read(0), 10);
        f.advance_ticks(4);
        assert_eq!(f.latch_read(0), 2);
        f.advance_ticks(1);
        assert!(f.pit.output(0));
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 1);
    }

    #[test]
    fn mode3_odd_count_half_periods() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(2, 3, 5);
        f.pit.write_port_b(1);
        let mut outs = Vec::new();
        let mut values = Vec::new();
        for _ in 0..10 {
            outs.push(f.pit.output(2));
            values.push(f.latch_read(2));
            f.advance_ticks(1);
        }
        assert_eq!(outs, [true, true, true, false, false].repeat(2));
        assert_eq!(values, [5, 4, 2, 5, 2].repeat(2));
    }

    #[test]
    fn mode3_new_count_waits_for_the_half_cycle() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 3, 1000);
        f.advance_ticks(100);
        f.wr(0, 200);
        f.wr(0, 0);
        // The high half ends at 500; the new count starts with its low half.
        f.advance_ticks(399);
        assert!(f.pit.output(0));
        f.advance_ticks(1);
        assert!(!f.pit.output(0));
        assert_eq!(f.latch_read(0), 200);
        let deadline = f.pit.poll().unwrap();
        assert_eq!(ns_to_ticks(deadline), ns_to_ticks(f.clock.now_ns()) + 100);
        f.advance_ticks(100);
        assert!(f.pit.output(0));
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 1);
        f.advance_ticks(100);
        assert!(!f.pit.output(0));
    }

    #[test]
    fn mode0_one_shot_interrupt() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 0, 100);
        assert!(!f.pit.output(0));
        let deadline = f.pit.poll().unwrap();
        assert_eq!(ns_to_ticks(deadline), ns_to_ticks(f.clock.now_ns()) + 100);
        f.advance_ticks(99);
        assert_eq!(f.latch_read(0), 1);
        assert!(!f.pit.output(0));
        f.advance_ticks(1);
        assert!(f.pit.output(0));
        assert_eq!(f.pit.poll(), None, "one shot: nothing more scheduled");
        assert_eq!(f.irq.take_edges(), 1);
        // The counter wraps and keeps counting; OUT stays high.
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 0xffff);
        assert!(f.pit.output(0));
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let mut f = fixture();
        f.program(0, 0, 100);
        f.advance_ticks(10);
        f.wr(0, 50);
        let frozen = f.latch_read(0);
        f.advance_ticks(200);
        assert_eq!(f.latch_read(0), frozen);
        assert!(!f.pit.output(0));
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 0);
        f.wr(0, 0);
        assert_eq!(f.latch_read(0), 50);
    }

    #[test]
    fn control_word_raising_out_is_an_edge() {
        let mut f = fixture();
        f.program(0, 0, 1000); // OUT low
        f.wr(3, 0x34); // mode 2: OUT goes high at once
        assert_eq!(f.irq.take_edges(), 1);
        assert!(f.pit.output(0));
        assert_eq!(f.pit.poll(), None, "no count written yet");
    }

    #[test]
    fn mode4_strobe() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 4, 50);
        assert!(f.pit.output(0));
        f.advance_ticks(50);
        assert!(!f.pit.output(0));
        f.pit.poll();
        assert_eq!(f.irq.take_edges(), 0);
        f.advance_ticks(1);
        assert!(f.pit.output(0));
        assert_eq!(f.pit.poll(), None);
        assert_eq!(f.irq.take_edges(), 1);
    }

    #[test]
    fn mode1_and_mode5_wait_for_a_gate_trigger() {
        for mode in [1u8, 5] {
            let mut f = fixture();
            f.advance_ticks(0);
            f.program(2, mode, 30);
            assert!(f.pit.output(2));
            f.advance_ticks(100);
            assert!(f.pit.output(2), "mode {mode}: not triggered yet");
            f.pit.write_port_b(1);
            if mode == 1 {
                assert!(!f.pit.output(2));
            }
            f.advance_ticks(15);
            assert_eq!(f.latch_read(2), 15);
            // Retrigger.
            f.pit.write_port_b(0);
            f.pit.write_port_b(1);
            assert_eq!(f.latch_read(2), 30);
            f.advance_ticks(30);
            if mode == 1 {
                assert!(f.pit.output(2));
            } else {
                assert!(!f.pit.output(2));
                f.advance_ticks(1);
                assert!(f.pit.output(2));
            }
        }
    }

    #[test]
    fn gate_suspends_mode0_and_restarts_mode2() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.pit.write_port_b(1);
        f.program(2, 0, 100);
        f.advance_ticks(40);
        f.pit.write_port_b(0);
        f.advance_ticks(1000);
        assert_eq!(f.latch_read(2), 60, "suspended while the gate is low");
        f.pit.write_port_b(1);
        f.advance_ticks(60);
        assert!(f.pit.output(2));

        f.program(2, 2, 100);
        f.advance_ticks(99);
        assert!(!f.pit.output(2));
        f.pit.write_port_b(0);
        assert!(f.pit.output(2), "gate low forces OUT high in mode 2");
        f.advance_ticks(500);
        f.pit.write_port_b(1);
        assert_eq!(f.latch_read(2), 100, "gate rising edge reloads");
    }

    #[test]
    fn port_b_reports_gate_output_and_refresh() {
        let mut f = fixture();
        f.pit.write_port_b(0xff);
        let value = f.pit.read_port_b();
        assert_eq!(value & 0x0f, 0x0f);
        assert_eq!(value & 0xc0, 0);
        assert!(f.pit.speaker_enabled());
        // The classic delay loop: counter 2 in mode 0, wait for OUT.
        f.program(2, 0, 1193);
        assert_eq!(f.pit.read_port_b() & PORT_B_TIMER2_OUT, 0);
        f.clock.advance(1_000_001);
        assert_eq!(f.pit.read_port_b() & PORT_B_TIMER2_OUT, PORT_B_TIMER2_OUT);
        // Bit 4 toggles with time.
        let a = f.pit.read_port_b() & PORT_B_REFRESH;
        f.clock.advance(REFRESH_TOGGLE_NS);
        let b = f.pit.read_port_b() & PORT_B_REFRESH;
        assert_ne!(a, b);
        let pit = Arc::new(Mutex::new(f.pit));
        let mut port = PortB::new(pit.clone());
        port.write(0, &[0x02]);
        let mut buf = [0u8; 2];
        port.read(0, &mut buf);
        assert_eq!(buf[0] & 0x0f, 0x02);
        assert_eq!(buf[1], 0xff);
        port.read(1, &mut buf);
        assert_eq!(buf, [0xff, 0xff]);
    }

    #[test]
    fn access_modes() {
        let mut f = fixture();
        f.advance_ticks(0);
        // LSB only.
        f.wr(3, 0x14);
        f.wr(0, 0x80);
        assert_eq!(f.rd(0), 0x80);
        // MSB only.
        f.wr(3, 0x24);
        f.wr(0, 0x02);
        assert_eq!(f.rd(0), 0x02);
        assert_eq!(f.latch_read_single(0), 0x02);
        // LSB then MSB, live reads alternate.
        f.program(0, 2, 0x1234);
        assert_eq!(f.rd(0), 0x34);
        assert_eq!(f.rd(0), 0x12);
        assert_eq!(f.rd(0), 0x34);
    }

    impl Fixture {
        fn latch_read_single(&mut self, index: u8) -> u8 {
            self.wr(3, index << 6);
            self.rd(u64::from(index))
        }
    }

    #[test]
    fn latch_holds_until_read_and_is_not_relatched() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(1, 2, 1000);
        f.wr(3, 0x40);
        f.advance_ticks(100);
        f.wr(3, 0x40); // ignored: already latched
        assert_eq!(f.rd(1), 0xe8);
        f.advance_ticks(100);
        assert_eq!(f.rd(1), 0x03);
        assert_eq!(f.latch_read(1), 800);
    }

    #[test]
    fn bcd_counting() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.wr(3, 0x35); // counter 0, mode 2, BCD
        f.wr(0, 0x00);
        f.wr(0, 0x10); // 1000 decimal
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 0x0999);
        let deadline = f.pit.poll().unwrap();
        assert_eq!(ns_to_ticks(deadline), ns_to_ticks(f.clock.now_ns()) + 999);
        // Count 0 in BCD is 10000.
        f.wr(3, 0x31);
        f.wr(0, 0);
        f.wr(0, 0);
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 0x9999);
    }

    #[test]
    fn count_zero_is_65536() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.program(0, 2, 0);
        assert_eq!(f.latch_read(0), 0);
        f.advance_ticks(1);
        assert_eq!(f.latch_read(0), 0xffff);
        let deadline = f.pit.poll().unwrap();
        assert_eq!(ns_to_ticks(deadline), ns_to_ticks(f.clock.now_ns()) + 65535);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut f = fixture();
        f.advance_ticks(0);
        f.wr(3, 0x34);
        // Null count before the count is written.
        f.wr(3, 0xe2); // read-back status of counter 0
        assert_eq!(f.rd(0), 0x80 | 0x40 | 0x34, "OUT high, null count");
        f.wr(0, 0x10);
        f.wr(0, 0x00);
        f.advance_ticks(4);
        f.wr(3, 0xc2); // status and count of counter 0
        f.advance_ticks(4);
        assert_eq!(f.rd(0), 0x80 | 0x34, "OUT high, count loaded");
        assert_eq!(f.rd(0), 12);
        assert_eq!(f.rd(0), 0);
        // Count-only read-back for counters 0 and 2.
        f.program(2, 0, 300);
        f.wr(3, 0xda);
        assert_eq!(f.rd(2), 44);
        assert_eq!(f.rd(2), 1);
        assert_eq!(f.rd(0), 8);
    }

    #[test]
    fn tiny_periods_do_not_make_the_host_spin() {
        let mut f = fixture();
        f.program(0, 2, 2);
        let now = f.clock.now_ns();
        let deadline = f.pit.poll().unwrap();
        assert!(deadline >= now + MIN_POLL_INTERVAL_NS);
        f.program(0, 2, 1); // illegal in mode 2: must not misbehave
        f.pit.poll();
        f.advance_ticks(3);
        f.pit.poll();
    }

    #[test]
    fn control_register_reads_all_ones() {
        let mut f = fixture();
        assert_eq!(f.rd(3), 0xff);
        let mut buf = [0u8; 4];
        f.pit.read(0, &mut buf);
        assert_eq!(&buf[1..], &[0xff; 3]);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut f = fixture();
        f.program(0, 2, 5000);
        f.program(2, 3, 77);
        f.pit.write_port_b(3);
        f.advance_ticks(1234);
        let saved = f.pit.snapshot();
        let mut g = fixture();
        g.clock.set(f.clock.now_ns());
        g.pit.restore(saved.clone());
        assert_eq!(g.pit.snapshot(), saved);
        assert_eq!(g.latch_read(0), f.latch_read(0));
        assert_eq!(g.pit.poll(), f.pit.poll());
        assert_eq!(g.pit.read_port_b(), f.pit.read_port_b());
    }

    #[test]
    fn reset_returns_to_power_on() {
        let mut f = fixture();
        f.program(0, 2, 100);
        f.pit.reset();
        assert_eq!(f.pit.poll(), None);
        assert_eq!(f.pit.read_port_b() & 0x0f, 0);
    }

    #[test]
    fn spray_never_panics() {
        let mut f = fixture();
        let mut rng = XorShift::new(7);
        for seed in 0..20 {
            spray(&mut f.pit, seed, 20);
            f.clock.advance(rng.next_u64() % 50_000_000);
            f.pit.poll();
            f.pit.write_port_b(rng.next_u64() as u8);
            f.pit.read_port_b();
            f.pit
                .set_gate((rng.next_u64() % 5) as usize, rng.next_u64() & 1 == 0);
            f.pit.output(7);
        }
        let pit = Arc::new(Mutex::new(f.pit));
        spray(&mut PortB::new(pit), 3, 50);
    }

    #[test]
    fn random_programming_keeps_invariants() {
        let mut f = fixture();
        let mut rng = XorShift::new(12345);
        for _ in 0..5000 {
            let r = rng.next_u64();
            match r % 4 {
                0 => f.wr(3, (r >> 8) as u8),
                1 => f.wr((r >> 8) % 3, (r >> 16) as u8),
                2 => f.clock.advance((r >> 8) % 2_000_000),
                _ => {
                    if let Some(deadline) = f.pit.poll() {
                        assert!(deadline > f.clock.now_ns());
                    }
                }
            }
        }
    }
}
