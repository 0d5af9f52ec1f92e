//! Lazily computed arithmetic flags (Intel SDM vol. 1 §3.4.3).
//!
//! ADD/SUB/logic/INC/DEC record their operands and result; CF, PF, AF, ZF, SF
//! and OF are computed only when something reads them. Everything else that
//! writes flags stores them eagerly ([`FlagOp::Eager`]).

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Trap flag.
pub const TF: u64 = 1 << 8;
/// Interrupt enable flag.
pub const IF: u64 = 1 << 9;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// I/O privilege level (2 bits).
pub const IOPL: u64 = 3 << 12;
/// Nested task.
pub const NT: u64 = 1 << 14;
/// Resume flag.
pub const RF: u64 = 1 << 16;
/// Virtual-8086 mode.
pub const VM: u64 = 1 << 17;
/// Alignment check.
pub const AC: u64 = 1 << 18;
/// Virtual interrupt flag.
pub const VIF: u64 = 1 << 19;
/// Virtual interrupt pending.
pub const VIP: u64 = 1 << 20;
/// CPUID available.
pub const ID: u64 = 1 << 21;
/// The six arithmetic flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// What produced the current arithmetic flags (one byte: the JIT stores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagOp {
    /// Flags are stored in `bits` as they are.
    Eager,
    /// `res = dst + src (+ carry-in in aux)`.
    Add,
    /// `res = dst - src (- borrow-in in aux)`.
    Sub,
    /// AND/OR/XOR/TEST: CF=OF=0, AF=0.
    Logic,
    /// INC: CF kept in `aux`.
    Inc,
    /// DEC: CF kept in `aux`.
    Dec,
    /// SHL/SHR/SAR by a non-zero count: CF and OF at their RFLAGS positions
    /// in `aux`; ZF/SF/PF from `res`; AF clear.
    Shift,
    /// IMUL: CF = OF = (`aux` != 0); SF/PF from `res`; ZF and AF clear.
    Mul,
}

/// RFLAGS with lazily evaluated arithmetic bits.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    /// Producer of the arithmetic flags.
    pub op: FlagOp,
    /// Operand size in bytes (1, 2, 4, 8).
    pub size: u8,
    /// First operand.
    pub dst: u64,
    /// Second operand.
    pub src: u64,
    /// Result, masked to `size`.
    pub res: u64,
    /// Carry/borrow-in for ADC/SBB, old CF for INC/DEC.
    pub aux: u64,
    /// Non-arithmetic bits always; arithmetic bits too when `op` is `Eager`.
    pub bits: u64,
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            op: FlagOp::Eager,
            size: 4,
            dst: 0,
            src: 0,
            res: 0,
            aux: 0,
            bits: 2,
        }
    }
}

/// Mask of an operand of `size` bytes.
#[inline(always)]
pub fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}

/// Sign bit of an operand of `size` bytes.
#[inline(always)]
pub fn sign_bit(size: u8) -> u64 {
    1u64 << (size as u32 * 8 - 1)
}

/// PF of a result: set when its low byte has an even number of ones.
#[inline(always)]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

impl Flags {
    /// Records an ADD/ADC.
    #[inline(always)]
    pub fn set_add(&mut self, size: u8, dst: u64, src: u64, carry: u64, res: u64) {
        self.op = FlagOp::Add;
        self.size = size;
        self.dst = dst;
        self.src = src;
        self.aux = carry;
        self.res = res;
    }
    /// Records a SUB/SBB/CMP/NEG.
    #[inline(always)]
    pub fn set_sub(&mut self, size: u8, dst: u64, src: u64, borrow: u64, res: u64) {
        self.op = FlagOp::Sub;
        self.size = size;
        self.dst = dst;
        self.src = src;
        self.aux = borrow;
        self.res = res;
    }
    /// Records a logic operation.
    #[inline(always)]
    pub fn set_logic(&mut self, size: u8, res: u64) {
        self.op = FlagOp::Logic;
        self.size = size;
        self.res = res;
    }
    /// Records INC (`inc = true`) or DEC, keeping CF.
    #[inline(always)]
    pub fn set_incdec(&mut self, inc: bool, size: u8, res: u64) {
        let cf = self.cf() as u64;
        self.op = if inc { FlagOp::Inc } else { FlagOp::Dec };
        self.size = size;
        self.res = res;
        self.aux = cf;
    }

    /// Carry flag.
    #[inline(always)]
    pub fn cf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & CF != 0,
            FlagOp::Add => self.res < self.dst || (self.aux != 0 && self.res == self.dst),
            FlagOp::Sub => self.dst < self.src || (self.aux != 0 && self.dst == self.src),
            FlagOp::Logic => false,
            FlagOp::Inc | FlagOp::Dec | FlagOp::Mul => self.aux != 0,
            FlagOp::Shift => self.aux & CF != 0,
        }
    }
    /// Zero flag.
    #[inline(always)]
    pub fn zf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & ZF != 0,
            FlagOp::Mul => false,
            _ => self.res == 0,
        }
    }
    /// Sign flag.
    #[inline(always)]
    pub fn sf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & SF != 0,
            _ => self.res & sign_bit(self.size) != 0,
        }
    }
    /// Parity flag.
    #[inline(always)]
    pub fn pf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & PF != 0,
            _ => parity(self.res),
        }
    }
    /// Auxiliary carry flag.
    #[inline(always)]
    pub fn af(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & AF != 0,
            FlagOp::Add | FlagOp::Sub => (self.dst ^ self.src ^ self.res) & 0x10 != 0,
            FlagOp::Logic | FlagOp::Shift | FlagOp::Mul => false,
            FlagOp::Inc => self.res & 0xf == 0,
            FlagOp::Dec => self.res & 0xf == 0xf,
        }
    }
    /// Overflow flag.
    #[inline(always)]
    pub fn of(&self) -> bool {
        let sb = sign_bit(self.size);
        match self.op {
            FlagOp::Eager => self.bits & OF != 0,
            FlagOp::Add => (self.dst ^ self.res) & (self.src ^ self.res) & sb != 0,
            FlagOp::Sub => (self.dst ^ self.src) & (self.dst ^ self.res) & sb != 0,
            FlagOp::Logic => false,
            FlagOp::Inc => self.res == sb,
            FlagOp::Dec => self.res == sb - 1,
            FlagOp::Shift => self.aux & OF != 0,
            FlagOp::Mul => self.aux != 0,
        }
    }

    /// The architectural RFLAGS value.
    #[inline]
    pub fn get(&self) -> u64 {
        if self.op == FlagOp::Eager {
            return self.bits | 2;
        }
        let mut v = (self.bits & !ARITH) | 2;
        if self.cf() {
            v |= CF;
        }
        if self.pf() {
            v |= PF;
        }
        if self.af() {
            v |= AF;
        }
        if self.zf() {
            v |= ZF;
        }
        if self.sf() {
            v |= SF;
        }
        if self.of() {
            v |= OF;
        }
        v
    }

    /// Sets RFLAGS to `v` exactly (callers mask what the instruction may change).
    #[inline]
    pub fn set(&mut self, v: u64) {
        self.op = FlagOp::Eager;
        self.bits = (v | 2) & 0x3f_7fd7;
    }

    /// Replaces only the bits in `mask` with those of `v`.
    #[inline]
    pub fn set_masked(&mut self, v: u64, mask: u64) {
        let cur = self.get();
        self.set((cur & !mask) | (v & mask));
    }

    /// Sets or clears one flag bit.
    #[inline]
    pub fn set_bit(&mut self, bit: u64, on: bool) {
        if bit & ARITH != 0 {
            let cur = self.get();
            self.set(if on { cur | bit } else { cur & !bit });
        } else if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
    }

    /// A non-arithmetic flag (IF, DF, TF, VM, ...).
    #[inline(always)]
    pub fn sys(&self, bit: u64) -> bool {
        self.bits & bit != 0
    }

    /// Evaluates condition code `cc` (0..15 as in Jcc's low nibble).
    #[inline]
    pub fn cond(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.pf(),
            6 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        };
        r != (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_flags() {
        let mut f = Flags::default();
        f.set_add(1, 0xff, 1, 0, 0);
        assert!(f.cf() && f.zf() && f.af() && !f.of() && f.pf());
        f.set_add(1, 0x7f, 1, 0, 0x80);
        assert!(!f.cf() && f.of() && f.sf());
        f.set_add(1, 0xff, 0xff, 1, 0xff);
        assert!(f.cf());
    }

    #[test]
    fn sub_flags() {
        let mut f = Flags::default();
        f.set_sub(4, 1, 2, 0, 0xffff_ffff);
        assert!(f.cf() && f.sf() && !f.of());
        f.set_sub(1, 0x80, 1, 0, 0x7f);
        assert!(f.of() && !f.cf());
        f.set_sub(1, 5, 5, 1, 0xff);
        assert!(f.cf());
        assert!(f.cond(2) && !f.cond(3));
    }

    #[test]
    fn get_set_roundtrip() {
        let mut f = Flags::default();
        f.set(CF | ZF | IF | DF);
        assert_eq!(f.get(), CF | ZF | IF | DF | 2);
        f.set_incdec(true, 4, 0);
        assert!(f.cf() && f.zf());
        assert_eq!(f.get() & (IF | DF), IF | DF);
    }
}
