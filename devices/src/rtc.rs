//! Motorola MC146818A real-time clock and CMOS RAM (the PC's RTC at ports
//! 0x70/0x71, IRQ 8), per the MC146818A data sheet.
//!
//! Time and date registers follow the host's wall clock from the moment the
//! machine starts (UTC), moving with machine time; the guest may set them.
//! Register A's update-in-progress bit is set during the last 244 µs of each
//! second, as on the chip. Periodic, alarm and update-ended interrupts set
//! register C and raise IRQ 8 when enabled; reading register C clears them.

use crate::{log_odd_access, BusDevice, Clock, IrqLine, Snapshot};
use std::sync::Arc;

/// Register A: update in progress.
const A_UIP: u8 = 0x80;
/// Register B: updates inhibited while the guest sets the time.
const B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
const B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
const B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
const B_UIE: u8 = 0x10;
/// Register B: binary (not BCD) data mode.
const B_DM: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register C: interrupt request flag.
const C_IRQF: u8 = 0x80;
/// Register C: periodic flag.
const C_PF: u8 = 0x40;
/// Register C: alarm flag.
const C_AF: u8 = 0x20;
/// Register C: update-ended flag.
const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

const NS: i128 = 1_000_000_000;
/// How long before the update UIP reads as set (data sheet: 244 µs).
const UIP_NS: i128 = 244_000;

/// Register numbers.
mod reg {
    pub const SECONDS: usize = 0x00;
    pub const SECONDS_ALARM: usize = 0x01;
    pub const MINUTES: usize = 0x02;
    pub const MINUTES_ALARM: usize = 0x03;
    pub const HOURS: usize = 0x04;
    pub const HOURS_ALARM: usize = 0x05;
    pub const WEEKDAY: usize = 0x06;
    pub const DAY: usize = 0x07;
    pub const MONTH: usize = 0x08;
    pub const YEAR: usize = 0x09;
    pub const A: usize = 0x0a;
    pub const B: usize = 0x0b;
    pub const C: usize = 0x0c;
    pub const D: usize = 0x0d;
    /// The century byte of the IBM PC CMOS layout (BCD).
    pub const CENTURY: usize = 0x32;
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Count from March so that the leap day ends a year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Broken-down time of `secs` since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tm {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    /// 1 = Sunday.
    weekday: u32,
}

impl Tm {
    fn from_secs(secs: i64) -> Tm {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Tm {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            min: (rem / 60 % 60) as u32,
            sec: (rem % 60) as u32,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        }
    }

    fn to_secs(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + self.hour as i64 * 3600
            + self.min as i64 * 60
            + self.sec as i64
    }
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    (v >> 4) as u32 * 10 + (v & 0xf) as u32
}

/// Saved state of the [`Rtc`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    /// CMOS RAM and the registers kept as stored (alarms, A, B, C).
    pub ram: Vec<u8>,
    /// Selected register.
    pub index: u8,
    /// Guest Unix time in ns minus machine time in ns.
    pub offset_ns: i64,
    /// Seconds being set while register B's SET bit is on.
    pub frozen: Option<i64>,
}

/// The MC146818A RTC with 128 bytes of CMOS RAM.
pub struct Rtc {
    clock: Arc<dyn Clock>,
    irq: Arc<dyn IrqLine>,
    ram: [u8; 128],
    index: u8,
    /// Guest Unix time in ns = machine time in ns + this.
    offset_ns: i128,
    /// The time being set while SET is on (updates are inhibited).
    frozen: Option<i64>,
    /// Machine time up to which periodic and update events were counted.
    checked_ns: u64,
    irq_level: bool,
}

impl Rtc {
    /// An RTC showing `unix_ns` (nanoseconds since the Unix epoch) at
    /// machine time 0, interrupting on `irq`.
    pub fn new(clock: Arc<dyn Clock>, irq: Arc<dyn IrqLine>, unix_ns: i128) -> Self {
        let mut rtc = Rtc {
            clock,
            irq,
            ram: [0; 128],
            index: 0,
            offset_ns: unix_ns,
            frozen: None,
            checked_ns: 0,
            irq_level: false,
        };
        rtc.reset();
        rtc
    }

    /// An RTC showing the host's current UTC time.
    pub fn with_host_time(clock: Arc<dyn Clock>, irq: Arc<dyn IrqLine>) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let machine = clock.now_ns() as i128;
        Self::new(clock, irq, now - machine)
    }

    /// The power-on register state (RAM contents and time are kept, as the
    /// chip is battery backed).
    pub fn reset(&mut self) {
        self.ram[reg::A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        self.ram[reg::B] = B_24H;
        self.ram[reg::C] = 0;
        self.frozen = None;
        self.checked_ns = self.clock.now_ns();
        self.set_irq(false);
        let century = (self.tm().year / 100) as u32;
        self.ram[reg::CENTURY] = to_bcd(century);
    }

    /// Sets CMOS RAM byte `index` (the machine fills in what firmware reads).
    pub fn set_ram(&mut self, index: u8, value: u8) {
        if (index as usize) > reg::D && (index as usize) < self.ram.len() {
            self.ram[index as usize] = value;
        }
    }

    fn unix_ns(&self) -> i128 {
        self.clock.now_ns() as i128 + self.offset_ns
    }

    fn secs(&self) -> i64 {
        match self.frozen {
            Some(s) => s,
            None => self.unix_ns().div_euclid(NS) as i64,
        }
    }

    fn tm(&self) -> Tm {
        Tm::from_secs(self.secs())
    }

    fn binary(&self) -> bool {
        self.ram[reg::B] & B_DM != 0
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            v as u32
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.ram[reg::B] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = h >= 12;
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if pm { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.ram[reg::B] & B_24H != 0 {
            return self.decode(v) % 24;
        }
        let h12 = self.decode(v & 0x7f) % 12;
        if v & 0x80 != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    /// Register `r` as the guest reads it.
    fn read_reg(&mut self, r: usize) -> u8 {
        let tm = self.tm();
        match r {
            reg::SECONDS => self.encode(tm.sec),
            reg::MINUTES => self.encode(tm.min),
            reg::HOURS => self.encode_hour(tm.hour),
            reg::WEEKDAY => self.encode(tm.weekday),
            reg::DAY => self.encode(tm.day),
            reg::MONTH => self.encode(tm.month),
            reg::YEAR => self.encode(tm.year.rem_euclid(100) as u32),
            reg::A => {
                let frac = self.unix_ns().rem_euclid(NS);
                let uip = self.frozen.is_none() && frac >= NS - UIP_NS;
                (self.ram[reg::A] & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            reg::C => {
                self.update_flags(self.clock.now_ns());
                let v = self.ram[reg::C];
                self.ram[reg::C] = 0;
                self.set_irq(false);
                v
            }
            reg::D => D_VRT,
            _ => self.ram[r],
        }
    }

    /// Guest write of register `r`.
    fn write_reg(&mut self, r: usize, v: u8) {
        match r {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::WEEKDAY
            | reg::DAY
            | reg::MONTH
            | reg::YEAR => self.set_time_field(r, v),
            reg::A => self.ram[reg::A] = v & !A_UIP,
            reg::B => {
                let old = self.ram[reg::B];
                self.ram[reg::B] = v;
                if v & B_SET != 0 && old & B_SET == 0 {
                    self.frozen = Some(self.unix_ns().div_euclid(NS) as i64);
                } else if v & B_SET == 0 {
                    if let Some(s) = self.frozen.take() {
                        // The divider chain restarts: the next update is a
                        // second after the guest let go.
                        self.offset_ns = s as i128 * NS - self.clock.now_ns() as i128;
                    }
                }
                self.update_irq();
            }
            reg::C | reg::D => log_odd_access!("rtc: write {v:#x} to read-only register {r:#x}"),
            _ => self.ram[r] = v,
        }
    }

    /// A guest write to a time or date register: the clock takes the new
    /// value (at once when updates are not inhibited).
    fn set_time_field(&mut self, r: usize, v: u8) {
        let mut tm = self.tm();
        match r {
            reg::SECONDS => tm.sec = self.decode(v).min(59),
            reg::MINUTES => tm.min = self.decode(v).min(59),
            reg::HOURS => tm.hour = self.decode_hour(v),
            reg::DAY => tm.day = self.decode(v).clamp(1, 31),
            reg::MONTH => tm.month = self.decode(v).clamp(1, 12),
            reg::YEAR => {
                let century = from_bcd(self.ram[reg::CENTURY]) as i64;
                tm.year = century * 100 + (self.decode(v) % 100) as i64;
            }
            _ => return, // the weekday follows from the date
        }
        let secs = tm.to_secs();
        match &mut self.frozen {
            Some(s) => *s = secs,
            None => {
                let frac = self.unix_ns().rem_euclid(NS);
                self.offset_ns = secs as i128 * NS + frac - self.clock.now_ns() as i128;
            }
        }
    }

    /// Periodic interrupt period in ns (register A's rate select), if any.
    fn period_ns(&self) -> Option<u64> {
        let rs = (self.ram[reg::A] & 0x0f) as u32;
        let shift = match rs {
            0 => return None,
            1 | 2 => rs + 6,
            _ => rs - 1,
        };
        // 2^shift cycles of the 32.768 kHz time base.
        Some(((1u64 << shift) * 1_000_000_000) / 32_768)
    }

    /// Sets register C's flags for what happened up to machine time `now`.
    fn update_flags(&mut self, now: u64) {
        let last = self.checked_ns;
        if now <= last {
            return;
        }
        self.checked_ns = now;
        if let Some(p) = self.period_ns() {
            if now / p != last / p {
                self.ram[reg::C] |= C_PF;
            }
        }
        if self.frozen.is_none() {
            let sec_of = |t: u64| (t as i128 + self.offset_ns).div_euclid(NS);
            if sec_of(now) != sec_of(last) {
                self.ram[reg::C] |= C_UF;
                if self.alarm_matches() {
                    self.ram[reg::C] |= C_AF;
                }
            }
        }
        self.update_irq();
    }

    fn alarm_matches(&self) -> bool {
        let tm = self.tm();
        let check = |alarm: u8, value: u8| alarm & 0xc0 == 0xc0 || alarm == value;
        check(self.ram[reg::SECONDS_ALARM], self.encode(tm.sec))
            && check(self.ram[reg::MINUTES_ALARM], self.encode(tm.min))
            && check(self.ram[reg::HOURS_ALARM], self.encode_hour(tm.hour))
    }

    fn update_irq(&mut self) {
        let b = self.ram[reg::B];
        let c = self.ram[reg::C];
        let pending = (b & B_PIE != 0 && c & C_PF != 0)
            || (b & B_AIE != 0 && c & C_AF != 0)
            || (b & B_UIE != 0 && c & C_UF != 0);
        if pending {
            self.ram[reg::C] |= C_IRQF;
        }
        self.set_irq(self.ram[reg::C] & C_IRQF != 0);
    }

    fn set_irq(&mut self, level: bool) {
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Runs the clock's interrupts up to now; returns the machine time (ns)
    /// of the next event that may interrupt, if any is enabled.
    pub fn poll(&mut self) -> Option<u64> {
        let now = self.clock.now_ns();
        self.update_flags(now);
        let b = self.ram[reg::B];
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.period_ns() {
                next = Some((now / p + 1) * p);
            }
        }
        if b & (B_UIE | B_AIE) != 0 && self.frozen.is_none() {
            let unix = now as i128 + self.offset_ns;
            let boundary = (unix.div_euclid(NS) + 1) * NS - self.offset_ns;
            let t = boundary.clamp(0, u64::MAX as i128) as u64;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            1 => self.read_reg((self.index & 0x7f) as usize),
            // The index port is write-only on the PC.
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        match offset {
            // Bit 7 masks NMIs on the PC; the RTC uses the low 7 bits.
            0 => self.index = v,
            1 => self.write_reg((self.index & 0x7f) as usize, v),
            _ => log_odd_access!("rtc: write {v:#x} at offset {offset:#x}"),
        }
    }
}

impl Snapshot for Rtc {
    type State = RtcState;

    fn snapshot(&self) -> RtcState {
        RtcState {
            ram: self.ram.to_vec(),
            index: self.index,
            offset_ns: self.offset_ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            frozen: self.frozen,
        }
    }

    fn restore(&mut self, state: RtcState) {
        for (d, s) in self.ram.iter_mut().zip(state.ram.iter()) {
            *d = *s;
        }
        self.index = state.index;
        self.offset_ns = state.offset_ns as i128;
        self.frozen = state.frozen;
        self.checked_ns = self.clock.now_ns();
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
        }
    }

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const T0: i128 = 1_709_251_198 * NS;

    fn rtc() -> (Rtc, Arc<ManualClock>, Arc<Line>) {
        let clock = Arc::new(ManualClock::default());
        let line = Arc::new(Line::default());
        let r = Rtc::new(clock.clone(), line.clone(), T0);
        (r, clock, line)
    }

    fn rd(r: &mut Rtc, i: u8) -> u8 {
        r.write(0, &[i]);
        let mut b = [0];
        r.read(1, &mut b);
        b[0]
    }

    fn wr(r: &mut Rtc, i: u8, v: u8) {
        r.write(0, &[i]);
        r.write(1, &[v]);
    }

    #[test]
    fn calendar_round_trips() {
        for secs in [0i64, 951_782_400, 1_709_251_198, 4_102_444_800, -86_400] {
            assert_eq!(Tm::from_secs(secs).to_secs(), secs);
        }
        let tm = Tm::from_secs(1_709_251_198);
        assert_eq!((tm.year, tm.month, tm.day), (2024, 2, 29));
        assert_eq!((tm.hour, tm.min, tm.sec, tm.weekday), (23, 59, 58, 5));
    }

    #[test]
    fn reads_bcd_time_and_rolls_over_the_leap_day() {
        let (mut r, clock, _) = rtc();
        assert_eq!(rd(&mut r, 0x09), 0x24);
        assert_eq!(rd(&mut r, 0x08), 0x02);
        assert_eq!(rd(&mut r, 0x07), 0x29);
        assert_eq!(rd(&mut r, 0x04), 0x23);
        assert_eq!(rd(&mut r, 0x02), 0x59);
        assert_eq!(rd(&mut r, 0x00), 0x58);
        assert_eq!(rd(&mut r, 0x32), 0x20);
        assert_eq!(rd(&mut r, 0x0d), 0x80);
        clock.advance(2_000_000_000);
        assert_eq!(rd(&mut r, 0x08), 0x03);
        assert_eq!(rd(&mut r, 0x07), 0x01);
        assert_eq!(rd(&mut r, 0x04), 0x00);
        assert_eq!(rd(&mut r, 0x06), 6); // Friday
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut r, _, _) = rtc();
        wr(&mut r, 0x0b, B_DM); // binary, 12-hour
        assert_eq!(rd(&mut r, 0x04), 0x80 | 11);
        assert_eq!(rd(&mut r, 0x00), 58);
    }

    #[test]
    fn uip_only_just_before_the_update() {
        let (mut r, clock, _) = rtc();
        assert_eq!(rd(&mut r, 0x0a) & A_UIP, 0);
        clock.set(1_000_000_000 - 100_000);
        assert_eq!(rd(&mut r, 0x0a) & A_UIP, A_UIP);
        clock.set(1_000_000_000 + 1);
        assert_eq!(rd(&mut r, 0x0a), 0x26);
    }

    #[test]
    fn guest_sets_the_time_with_set_bit() {
        let (mut r, clock, _) = rtc();
        wr(&mut r, 0x0b, B_SET | B_24H);
        wr(&mut r, 0x09, 0x31);
        wr(&mut r, 0x08, 0x12);
        wr(&mut r, 0x07, 0x25);
        wr(&mut r, 0x04, 0x08);
        wr(&mut r, 0x02, 0x30);
        wr(&mut r, 0x00, 0x00);
        clock.advance(5_000_000_000); // frozen while SET
        assert_eq!(rd(&mut r, 0x00), 0x00);
        wr(&mut r, 0x0b, B_24H);
        clock.advance(3_000_000_000);
        assert_eq!(
            (rd(&mut r, 0x09), rd(&mut r, 0x08), rd(&mut r, 0x07)),
            (0x31, 0x12, 0x25)
        );
        assert_eq!((rd(&mut r, 0x04), rd(&mut r, 0x02)), (0x08, 0x30));
        assert_eq!(rd(&mut r, 0x00), 0x03);
    }

    #[test]
    fn periodic_and_update_interrupts() {
        let (mut r, clock, line) = rtc();
        assert_eq!(r.poll(), None);
        wr(&mut r, 0x0b, B_24H | B_PIE);
        let next = r.poll().expect("periodic deadline");
        assert_eq!(next, 976_562); // 1024 Hz
        clock.set(next);
        r.poll();
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(rd(&mut r, 0x0c), C_IRQF | C_PF);
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(rd(&mut r, 0x0c), 0);
        wr(&mut r, 0x0b, B_24H | B_UIE);
        let next = r.poll().expect("update deadline");
        assert_eq!(next, 1_000_000_000);
        clock.set(next);
        r.poll();
        assert_eq!(rd(&mut r, 0x0c) & (C_IRQF | C_UF), C_IRQF | C_UF);
    }

    #[test]
    fn alarm_fires_when_the_time_matches() {
        let (mut r, clock, line) = rtc();
        wr(&mut r, 0x01, 0x00);
        wr(&mut r, 0x03, 0x00);
        wr(&mut r, 0x05, 0xc0); // any hour
        wr(&mut r, 0x0b, B_24H | B_AIE);
        clock.set(1_000_000_000);
        r.poll();
        assert!(!line.0.load(Ordering::SeqCst)); // 23:59:59
        clock.set(2_000_000_000);
        r.poll();
        assert!(line.0.load(Ordering::SeqCst)); // 00:00:00
        assert_eq!(rd(&mut r, 0x0c) & C_AF, C_AF);
    }

    #[test]
    fn cmos_ram_and_hostile_accesses() {
        let (mut r, _, _) = rtc();
        wr(&mut r, 0x40, 0x5a);
        assert_eq!(rd(&mut r, 0x40), 0x5a);
        assert_eq!(rd(&mut r, 0xc0), 0x5a); // bit 7 is the NMI mask
        wr(&mut r, 0x0c, 0xff);
        wr(&mut r, 0x0d, 0x00);
        assert_eq!(rd(&mut r, 0x0d), D_VRT);
        let mut rng = 0x1234_5678u32;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let off = (rng & 3) as u64;
            if rng & 0x100 != 0 {
                r.write(off, &[(rng >> 16) as u8]);
            } else {
                let mut b = [0u8; 2];
                r.read(off, &mut b);
            }
            r.poll();
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let (mut r, clock, line) = rtc();
        wr(&mut r, 0x20, 7);
        wr(&mut r, 0x0b, B_24H | B_DM);
        let s = r.snapshot();
        let mut r2 = Rtc::new(clock.clone(), line.clone(), 0);
        r2.restore(s);
        assert_eq!(rd(&mut r2, 0x20), 7);
        assert_eq!(rd(&mut r2, 0x00), 58);
    }
}
