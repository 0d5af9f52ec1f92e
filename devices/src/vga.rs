//! The standard VGA (IBM VGA Technical Reference; FreeVGA's register
//! descriptions) with the Bochs VBE "DISPI" extension, as the PCI display
//! function QEMU calls `VGA` / "stdvga" (1234:1111): what SeaBIOS's
//! `vgabios-stdvga.bin`, Linux's `vesafb` and `bochs-drm` drive.
//!
//! The device is reached through four doors, all over one shared [`Vga`]:
//! - [`VgaPorts`]: I/O ports 0x3b0-0x3df (misc output, sequencer, graphics
//!   controller, CRTC, attribute controller, DAC, input status);
//! - [`VgaWindow`]: the legacy memory window 0xa0000-0xbffff (planar,
//!   odd/even and chain-4 CPU addressing, read modes 0-1, write modes 0-3,
//!   latches), or the VBE bank when VBE is enabled;
//! - [`VbePorts`]: the DISPI index/data ports 0x1ce/0x1cf;
//! - the [`PciFunction`]: BAR 0 = the 16 MiB VRAM (linear framebuffer),
//!   BAR 2 = 4 KiB of MMIO (VGA ports at 0x400, DISPI registers at 0x500,
//!   QEMU's extended registers at 0x600), and the expansion ROM (VGA BIOS).
//!
//! # VRAM layout
//!
//! VRAM is one byte array of 16 MiB. The VGA's four 64 KiB planes are
//! interleaved in its first 256 KiB: byte `o` of plane `p` lives at
//! `o * 4 + p`. CPU addressing is "compressed": in chain-4 mode CPU offset
//! `a` is plane `a & 3`, plane offset `a >> 2` (so VRAM byte `a`, the same
//! byte the linear framebuffer shows), in odd/even mode CPU offset `a` is
//! plane `a & 1`, plane offset `a >> 1`, in planar mode plane offset `a`.
//! The CRTC reads the same way: one plane offset per character clock and
//! `2 * CR13` plane offsets per line in every mode, which reproduces the
//! standard modes' pictures (text at plane offsets start+i: character in
//! plane 0, attribute in plane 1; fonts in plane 2 at 32 bytes a glyph).
//! VBE modes see VRAM as plain bytes.
//!
//! For the host side the device offers a plain-data view: [`Vga::mode`],
//! palette lookups, [`Vga::vram`], and dirty tracking ([`Vga::take_dirty`]).
//! Not modelled: split screen (line compare), pixel panning, horizontal
//! timings, 4 bpp VBE modes, light pen.

use crate::pci::{ConfigSpace, PciFunction, PciRegion, Space, ROM_BAR};
use crate::{log_odd_access, BusDevice, Snapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};

/// VRAM size: 16 MiB (BAR 0).
pub const VRAM_SIZE: usize = 16 << 20;
/// Size of a dirty-tracking page.
pub const PAGE_SIZE: usize = 4096;
const PAGES: usize = VRAM_SIZE / PAGE_SIZE;
/// Widest VBE mode.
pub const VBE_MAX_XRES: u16 = 2560;
/// Tallest VBE mode.
pub const VBE_MAX_YRES: u16 = 1600;
/// Base I/O port of [`VgaPorts`] (registered for [`VGA_PORTS_LEN`] ports).
pub const VGA_PORTS_BASE: u16 = 0x3b0;
/// Number of ports of [`VgaPorts`].
pub const VGA_PORTS_LEN: u16 = 0x30;
/// Base address of [`VgaWindow`] (registered for [`VGA_WINDOW_LEN`] bytes).
pub const VGA_WINDOW_BASE: u64 = 0xa0000;
/// Size of the legacy memory window.
pub const VGA_WINDOW_LEN: u64 = 0x20000;
/// Base I/O port of [`VbePorts`] (index; data follows; 2 ports).
pub const VBE_PORTS_BASE: u16 = 0x1ce;
/// PCI vendor ID (QEMU's stdvga).
pub const PCI_VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const PCI_DEVICE: u16 = 0x1111;

/// DISPI register indices (Bochs `vbe.h`).
pub mod dispi {
    /// Interface version: 0xb0c0-0xb0c5.
    pub const ID: u16 = 0;
    /// Horizontal resolution.
    pub const XRES: u16 = 1;
    /// Vertical resolution.
    pub const YRES: u16 = 2;
    /// Bits per pixel (8, 15, 16, 24, 32).
    pub const BPP: u16 = 3;
    /// Enable flags ([`ENABLED`], [`GETCAPS`], [`DAC_8BIT`], [`LFB_ENABLED`], [`NOCLEARMEM`]).
    pub const ENABLE: u16 = 4;
    /// 64 KiB bank shown at 0xa0000.
    pub const BANK: u16 = 5;
    /// Virtual (scanline) width in pixels.
    pub const VIRT_WIDTH: u16 = 6;
    /// Virtual height in lines.
    pub const VIRT_HEIGHT: u16 = 7;
    /// Display start X in the virtual screen.
    pub const X_OFFSET: u16 = 8;
    /// Display start Y in the virtual screen.
    pub const Y_OFFSET: u16 = 9;
    /// VRAM size in 64 KiB units.
    pub const VIDEO_MEMORY_64K: u16 = 10;
    /// ENABLE: the VBE mode is on.
    pub const ENABLED: u16 = 0x01;
    /// ENABLE: reads of XRES/YRES/BPP return the maxima.
    pub const GETCAPS: u16 = 0x02;
    /// ENABLE: the DAC takes 8-bit values.
    pub const DAC_8BIT: u16 = 0x20;
    /// ENABLE: the linear framebuffer is in use.
    pub const LFB_ENABLED: u16 = 0x40;
    /// ENABLE: do not clear VRAM when enabling.
    pub const NOCLEARMEM: u16 = 0x80;
    /// The newest interface version.
    pub const ID_LATEST: u16 = 0xb0c5;
}

/// A [`Vga`] shared by its doors and the renderer.
pub type SharedVga = Arc<Mutex<Vga>>;

fn lock(v: &Mutex<Vga>) -> MutexGuard<'_, Vga> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

/// The text cursor (CRTC registers 0x0a, 0x0b, 0x0e, 0x0f).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Cell row.
    pub row: u32,
    /// Cell column.
    pub col: u32,
    /// First scan line of the cell drawn.
    pub start: u8,
    /// Last scan line of the cell drawn.
    pub end: u8,
}

/// An alphanumeric mode's geometry (IBM VGA "alphanumeric modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextMode {
    /// Columns (CR01 + 1).
    pub cols: u32,
    /// Rows (vertical display end / character height).
    pub rows: u32,
    /// Scan lines per character (CR09 bits 0-4, + 1).
    pub char_height: u32,
    /// Dots per character: 8 or 9 (SR1 bit 0).
    pub char_width: u32,
    /// Plane offset of the first cell (CR0C:CR0D).
    pub start: u32,
    /// Plane offsets from one row to the next (2 × CR13).
    pub stride: u32,
    /// Plane-2 offset of the font for attributes with bit 3 set (SR3 map A).
    pub font_a: u32,
    /// Plane-2 offset of the font for attributes with bit 3 clear (map B).
    pub font_b: u32,
    /// AR10 bit 2: characters 0xc0-0xdf repeat their 8th dot in the 9th.
    pub line_graphics: bool,
    /// AR10 bit 3: attribute bit 7 blinks instead of brightening the background.
    pub blink: bool,
    /// The cursor, when enabled and on the screen.
    pub cursor: Option<Cursor>,
}

/// How a graphics mode turns VRAM into colour indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphicsKind {
    /// Four planes, one bit each per pixel, through the attribute palette.
    Planar16,
    /// One byte per pixel straight to the DAC (mode 13h and "mode X").
    Byte256,
    /// CGA 2 bits per pixel with even/odd lines in two 8 KiB banks (modes 4/5).
    Cga4,
}

/// A VGA graphics mode's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphicsMode {
    /// Pixel format.
    pub kind: GraphicsKind,
    /// Pixels per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// Plane offset of the first line.
    pub start: u32,
    /// Plane offsets from one line to the next.
    pub stride: u32,
}

/// A Bochs VBE mode: pixels straight from VRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VbeMode {
    /// Pixels per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// 8 (DAC palette), 15 (x:5:5:5), 16 (5:6:5), 24 (B,G,R) or 32 (B,G,R,x).
    pub bpp: u32,
    /// Bytes from one line to the next.
    pub stride: u32,
    /// VRAM offset of the top-left visible pixel.
    pub offset: u32,
}

/// What the display shows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// Nothing (screen off, palette access, or unusable registers).
    Blank,
    /// Alphanumeric mode.
    Text(TextMode),
    /// VGA graphics mode.
    Graphics(GraphicsMode),
    /// VBE mode.
    Vbe(VbeMode),
}

/// What changed since the last [`Vga::take_dirty`].
#[derive(Debug, Clone)]
pub struct VgaDirty {
    /// Registers or palette affecting the whole picture changed.
    pub display: bool,
    pages: Vec<u64>,
}

impl VgaDirty {
    /// True if 4 KiB page `page` of VRAM was written.
    pub fn page(&self, page: usize) -> bool {
        self.pages
            .get(page / 64)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// True if any VRAM byte in `start..end` may have changed.
    pub fn range(&self, start: usize, end: usize) -> bool {
        if end <= start {
            return false;
        }
        let last = ((end - 1) / PAGE_SIZE).min(PAGES - 1);
        (start / PAGE_SIZE..=last).any(|p| self.page(p))
    }

    /// True if any page was written.
    pub fn any_pages(&self) -> bool {
        self.pages.iter().any(|&w| w != 0)
    }
}

/// Saved state of [`Vga`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VgaState {
    /// Misc output, feature control, 0x3c3 enable.
    pub misc: [u8; 3],
    /// Sequencer index and registers.
    pub seq: (u8, Vec<u8>),
    /// Graphics controller index and registers.
    pub gr: (u8, Vec<u8>),
    /// CRTC index and registers.
    pub crtc: (u8, Vec<u8>),
    /// Attribute controller index, flip-flop and registers.
    pub ar: (u8, bool, Vec<u8>),
    /// DAC: mask, read index, write index, read cycle, write cycle, state.
    pub dac_regs: [u8; 6],
    /// DAC write latch.
    pub dac_latch: [u8; 3],
    /// DAC entries (768 bytes: R, G, B).
    pub dac: Vec<u8>,
    /// Memory latches.
    pub latches: [u8; 4],
    /// DISPI index and registers 0-10, and the GETCAPS latch.
    pub vbe: (u16, Vec<u16>, bool),
    /// The PCI configuration space.
    pub config: Vec<u8>,
    /// VRAM.
    pub vram: Vec<u8>,
}

/// The VGA + Bochs VBE display adapter.
pub struct Vga {
    misc: u8,
    feature: u8,
    enable: u8,
    seq_index: u8,
    seq: [u8; 5],
    gr_index: u8,
    gr: [u8; 9],
    crtc_index: u8,
    crtc: [u8; 0x19],
    ar_index: u8,
    ar_flip: bool,
    ar: [u8; 0x15],
    dac_mask: u8,
    dac_read: u8,
    dac_write: u8,
    dac_read_cycle: u8,
    dac_write_cycle: u8,
    /// 0x3c7 read: 0 after a write-index write, 3 after a read-index write.
    dac_state: u8,
    dac_latch: [u8; 3],
    dac: [u8; 768],
    latches: [u8; 4],
    status_toggle: u8,
    vbe_index: u16,
    vbe: [u16; 11],
    vbe_caps: bool,
    vram: Vec<u8>,
    dirty_pages: Vec<u64>,
    display_dirty: bool,
    config: ConfigSpace,
    rom: Vec<u8>,
}

impl Vga {
    /// A VGA with blank registers and zeroed VRAM, whose expansion ROM holds
    /// `rom` (a VGA BIOS image; no ROM BAR when empty).
    pub fn new(rom: Vec<u8>) -> Self {
        let mut config = ConfigSpace::new(PCI_VENDOR, PCI_DEVICE, 2, [0x03, 0x00, 0x00]);
        config.set(crate::pci::reg::SUBSYSTEM_VENDOR, &[0xf4, 0x1a, 0x00, 0x11]);
        config.declare_bar(0, Space::Memory, VRAM_SIZE as u64, true);
        config.declare_bar(2, Space::Memory, 4096, false);
        let rom_len = (rom.len() as u64)
            .checked_next_power_of_two()
            .unwrap_or(0)
            .max(2048);
        if !rom.is_empty() && rom_len <= 1 << 24 {
            config.declare_bar(ROM_BAR, Space::Memory, rom_len, false);
        }
        let mut vbe = [0u16; 11];
        vbe[dispi::ID as usize] = dispi::ID_LATEST;
        vbe[dispi::BPP as usize] = 8;
        vbe[dispi::XRES as usize] = 640;
        vbe[dispi::YRES as usize] = 480;
        vbe[dispi::VIDEO_MEMORY_64K as usize] = (VRAM_SIZE >> 16) as u16;
        Vga {
            misc: 0,
            feature: 0,
            enable: 0,
            seq_index: 0,
            seq: [0; 5],
            gr_index: 0,
            gr: [0; 9],
            crtc_index: 0,
            crtc: [0; 0x19],
            ar_index: 0,
            ar_flip: false,
            ar: [0; 0x15],
            dac_mask: 0xff,
            dac_read: 0,
            dac_write: 0,
            dac_read_cycle: 0,
            dac_write_cycle: 0,
            dac_state: 0,
            dac_latch: [0; 3],
            dac: [0; 768],
            latches: [0; 4],
            status_toggle: 0,
            vbe_index: 0,
            vbe,
            vbe_caps: false,
            vram: vec![0; VRAM_SIZE],
            dirty_pages: vec![!0; PAGES / 64],
            display_dirty: true,
            config,
            rom,
        }
    }

    /// The VRAM bytes (layout in the module documentation).
    pub fn vram(&self) -> &[u8] {
        &self.vram
    }

    /// Takes the set of changes since the last call.
    pub fn take_dirty(&mut self) -> VgaDirty {
        VgaDirty {
            display: std::mem::take(&mut self.display_dirty),
            pages: std::mem::replace(&mut self.dirty_pages, vec![0; PAGES / 64]),
        }
    }

    #[inline]
    fn mark(&mut self, offset: usize) {
        let page = offset / PAGE_SIZE;
        if let Some(w) = self.dirty_pages.get_mut(page / 64) {
            *w |= 1 << (page % 64);
        }
    }

    fn mark_range(&mut self, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let last = start.saturating_add(len - 1);
        for page in start / PAGE_SIZE..=(last / PAGE_SIZE).min(PAGES - 1) {
            self.dirty_pages[page / 64] |= 1 << (page % 64);
        }
    }

    fn vbe_enabled(&self) -> bool {
        self.vbe[dispi::ENABLE as usize] & dispi::ENABLED != 0
    }

    fn dac_8bit(&self) -> bool {
        self.vbe[dispi::ENABLE as usize] & dispi::DAC_8BIT != 0
    }

    /// DAC entry `i` as 8-bit R, G, B (6-bit values scaled up unless the
    /// VBE 8-bit DAC is on).
    pub fn dac_rgb(&self, i: u8) -> [u8; 3] {
        let i = i as usize * 3;
        let c = [self.dac[i], self.dac[i + 1], self.dac[i + 2]];
        if self.dac_8bit() {
            c
        } else {
            c.map(|v| {
                let v = v & 0x3f;
                (v << 2) | (v >> 4)
            })
        }
    }

    /// The DAC entry a 4-bit text/planar colour selects through the
    /// attribute controller's palette (AR0-AR0F, AR10 bit 7, AR14) and the
    /// colour plane enable (AR12) and PEL mask.
    pub fn attribute_color(&self, c: u8) -> u8 {
        let c = c & self.ar[0x12] & 0x0f;
        let v = self.ar[c as usize];
        let mut idx = if self.ar[0x10] & 0x80 != 0 {
            (v & 0x0f) | ((self.ar[0x14] & 3) << 4)
        } else {
            v & 0x3f
        };
        idx |= (self.ar[0x14] & 0x0c) << 4;
        idx & self.dac_mask
    }

    /// The DAC entry a 256-colour or VBE 8 bpp pixel value selects (PEL mask).
    pub fn byte_color(&self, v: u8) -> u8 {
        v & self.dac_mask
    }

    fn vbe_bytes_per_pixel(bpp: u16) -> u32 {
        match bpp {
            8 => 1,
            15 | 16 => 2,
            24 => 3,
            _ => 4,
        }
    }

    /// The VBE registers made consistent: resolution within the maxima,
    /// virtual width at least the resolution, virtual height as VRAM
    /// allows, offsets keeping the screen inside VRAM.
    fn vbe_fixup(&mut self) {
        let r = &mut self.vbe;
        if !matches!(r[dispi::BPP as usize], 8 | 15 | 16 | 24 | 32) {
            r[dispi::BPP as usize] = 8;
        }
        let bpp = Self::vbe_bytes_per_pixel(r[dispi::BPP as usize]);
        let x = r[dispi::XRES as usize].clamp(8, VBE_MAX_XRES) & !7;
        let y = r[dispi::YRES as usize].clamp(1, VBE_MAX_YRES);
        r[dispi::XRES as usize] = x;
        r[dispi::YRES as usize] = y;
        let vw = r[dispi::VIRT_WIDTH as usize].max(x);
        let stride = vw as u32 * bpp;
        let vh = (VRAM_SIZE as u32 / stride).min(0xffff) as u16;
        let (vw, vh) = if vh < y { (x, y) } else { (vw, vh) };
        r[dispi::VIRT_WIDTH as usize] = vw;
        r[dispi::VIRT_HEIGHT as usize] = vh;
        r[dispi::X_OFFSET as usize] = r[dispi::X_OFFSET as usize].min(vw - x);
        r[dispi::Y_OFFSET as usize] = r[dispi::Y_OFFSET as usize].min(vh - y);
    }

    /// The VBE mode, if enabled.
    fn vbe_mode(&self) -> Option<VbeMode> {
        if !self.vbe_enabled() {
            return None;
        }
        let r = &self.vbe;
        let bpp = r[dispi::BPP as usize];
        let bytes = Self::vbe_bytes_per_pixel(bpp);
        let width = r[dispi::XRES as usize] as u32;
        let height = r[dispi::YRES as usize] as u32;
        let stride = r[dispi::VIRT_WIDTH as usize] as u32 * bytes;
        let offset = r[dispi::Y_OFFSET as usize] as u32 * stride
            + r[dispi::X_OFFSET as usize] as u32 * bytes;
        let end = offset as u64
            + stride as u64 * height.saturating_sub(1) as u64
            + (width * bytes) as u64;
        (width > 0 && height > 0 && end <= VRAM_SIZE as u64).then_some(VbeMode {
            width,
            height,
            bpp: bpp as u32,
            stride,
            offset,
        })
    }

    /// What the display shows now, from the registers.
    pub fn mode(&self) -> DisplayMode {
        if self.vbe_enabled() {
            return self.vbe_mode().map_or(DisplayMode::Blank, DisplayMode::Vbe);
        }
        // Palette address source clear, or screen off: blank.
        if self.ar_index & 0x20 == 0 || self.seq[1] & 0x20 != 0 {
            return DisplayMode::Blank;
        }
        let c = &self.crtc;
        let cols = c[1] as u32 + 1;
        let vde = (c[0x12] as u32 | ((c[7] as u32 & 2) << 7) | ((c[7] as u32 & 0x40) << 3)) + 1;
        let scan = (c[9] as u32 & 0x1f) + 1;
        let dbl = if c[9] & 0x80 != 0 { 2 } else { 1 };
        let start = ((c[0x0c] as u32) << 8) | c[0x0d] as u32;
        let stride = c[0x13] as u32 * 2;
        if self.gr[6] & 1 == 0 {
            let char_width = if self.seq[1] & 1 != 0 { 8 } else { 9 };
            let rows = vde / (scan * dbl);
            if rows == 0 || cols == 0 {
                return DisplayMode::Blank;
            }
            let map = |m: u8| ((m as u32 & 3) * 2 + (m as u32 >> 2)) * 0x2000;
            let sr3 = self.seq[3];
            let font_a = map(((sr3 >> 5) & 1) << 2 | ((sr3 >> 2) & 3));
            let font_b = map(((sr3 >> 4) & 1) << 2 | (sr3 & 3));
            let cs = c[0x0a];
            let ce = c[0x0b] & 0x1f;
            let pos = ((c[0x0e] as u32) << 8) | c[0x0f] as u32;
            let cursor = (cs & 0x20 == 0 && (cs & 0x1f) <= ce && (cs as u32 & 0x1f) < scan)
                .then(|| {
                    let rel = pos.wrapping_sub(start);
                    let (row, col) = (rel / stride.max(1), rel % stride.max(1));
                    (row < rows && col < cols).then_some(Cursor {
                        row,
                        col,
                        start: cs & 0x1f,
                        end: ce.min(scan as u8 - 1),
                    })
                })
                .flatten();
            return DisplayMode::Text(TextMode {
                cols,
                rows,
                char_height: scan,
                char_width,
                start,
                stride,
                font_a,
                font_b,
                line_graphics: self.ar[0x10] & 4 != 0,
                blink: self.ar[0x10] & 8 != 0,
                cursor,
            });
        }
        let (kind, width, height) = if self.gr[5] & 0x40 != 0 {
            (GraphicsKind::Byte256, cols * 4, vde / (scan * dbl))
        } else if self.gr[5] & 0x20 != 0 && c[0x17] & 1 == 0 {
            (GraphicsKind::Cga4, cols * 8, vde / dbl)
        } else {
            (GraphicsKind::Planar16, cols * 8, vde / (scan * dbl))
        };
        if width == 0 || height == 0 || width > 2048 || height > 2048 {
            return DisplayMode::Blank;
        }
        DisplayMode::Graphics(GraphicsMode {
            kind,
            width,
            height,
            start,
            stride,
        })
    }

    /// The text on the screen, one string per row, when in an
    /// alphanumeric mode (code page 437 mapped to Unicode).
    pub fn text_screen(&self) -> Option<Vec<String>> {
        let DisplayMode::Text(t) = self.mode() else {
            return None;
        };
        Some(
            (0..t.rows)
                .map(|r| {
                    (0..t.cols)
                        .map(|c| {
                            let off = (t.start + r * t.stride + c) & 0xffff;
                            cp437(self.vram[off as usize * 4])
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// The (character, attribute) at plane offset `off` (text modes).
    pub fn text_cell(&self, off: u32) -> (u8, u8) {
        let o = (off & 0xffff) as usize * 4;
        (self.vram[o], self.vram[o + 1])
    }

    /// Row `line` (0-31) of glyph `ch` in the font at plane-2 offset `font`.
    pub fn glyph_row(&self, font: u32, ch: u8, line: u32) -> u8 {
        let off = (font + ch as u32 * 32 + (line & 31)) & 0xffff;
        self.vram[off as usize * 4 + 2]
    }

    // ---- I/O ports ----

    fn crtc_port_ok(&self, port: u16) -> bool {
        let colour = self.misc & 1 != 0;
        if port & 0xfff0 == 0x3d0 {
            colour
        } else {
            !colour
        }
    }

    /// A guest write of `v` to VGA port `port` (0x3b0-0x3df).
    pub fn port_write(&mut self, port: u16, v: u8) {
        match port {
            0x3b4 | 0x3d4 if self.crtc_port_ok(port) => self.crtc_index = v,
            0x3b5 | 0x3d5 if self.crtc_port_ok(port) => self.crtc_write(v),
            0x3ba | 0x3da if self.crtc_port_ok(port) => self.feature = v,
            0x3c0 => {
                if self.ar_flip {
                    let i = (self.ar_index & 0x1f) as usize;
                    if let Some(r) = self.ar.get_mut(i) {
                        *r = v;
                        self.display_dirty = true;
                    }
                } else {
                    if (self.ar_index ^ v) & 0x20 != 0 {
                        self.display_dirty = true;
                    }
                    self.ar_index = v & 0x3f;
                }
                self.ar_flip = !self.ar_flip;
            }
            0x3c2 => {
                self.misc = v;
                self.display_dirty = true;
            }
            0x3c3 => self.enable = v & 1,
            0x3c4 => self.seq_index = v,
            0x3c5 => {
                if let Some(r) = self.seq.get_mut(self.seq_index as usize) {
                    *r = v;
                    if matches!(self.seq_index, 1 | 3) {
                        self.display_dirty = true;
                    }
                }
            }
            0x3c6 => {
                self.dac_mask = v;
                self.display_dirty = true;
            }
            0x3c7 => {
                self.dac_read = v;
                self.dac_read_cycle = 0;
                self.dac_state = 3;
            }
            0x3c8 => {
                self.dac_write = v;
                self.dac_write_cycle = 0;
                self.dac_state = 0;
            }
            0x3c9 => {
                let v = if self.dac_8bit() { v } else { v & 0x3f };
                self.dac_latch[self.dac_write_cycle as usize % 3] = v;
                self.dac_write_cycle += 1;
                if self.dac_write_cycle >= 3 {
                    let i = self.dac_write as usize * 3;
                    self.dac[i..i + 3].copy_from_slice(&self.dac_latch);
                    self.dac_write = self.dac_write.wrapping_add(1);
                    self.dac_write_cycle = 0;
                    self.display_dirty = true;
                }
            }
            0x3ce => self.gr_index = v,
            0x3cf => {
                if let Some(r) = self.gr.get_mut(self.gr_index as usize) {
                    *r = v;
                    if matches!(self.gr_index, 5 | 6) {
                        self.display_dirty = true;
                    }
                }
            }
            _ => log_odd_access!("vga: write {v:#x} to port {port:#x}"),
        }
    }

    fn crtc_write(&mut self, v: u8) {
        let i = self.crtc_index as usize;
        if i >= self.crtc.len() {
            log_odd_access!("vga: write to CRTC register {i:#x}");
            return;
        }
        // CR11 bit 7 protects CR00-CR07, except CR07's line compare bit 4.
        if self.crtc[0x11] & 0x80 != 0 && i <= 7 {
            if i == 7 {
                self.crtc[7] = (self.crtc[7] & !0x10) | (v & 0x10);
            }
            return;
        }
        self.crtc[i] = v;
        if !matches!(i, 0x0a | 0x0b | 0x0e | 0x0f) {
            self.display_dirty = true;
        }
    }

    /// A guest read of VGA port `port` (0x3b0-0x3df).
    pub fn port_read(&mut self, port: u16) -> u8 {
        match port {
            0x3b4 | 0x3d4 if self.crtc_port_ok(port) => self.crtc_index,
            0x3b5 | 0x3d5 if self.crtc_port_ok(port) => self
                .crtc
                .get(self.crtc_index as usize)
                .copied()
                .unwrap_or(0xff),
            0x3ba | 0x3da if self.crtc_port_ok(port) => {
                // Input status 1: resets the attribute flip-flop; the
                // retrace (bit 3) and display-disabled (bit 0) bits cycle
                // so polling loops for either edge end.
                self.ar_flip = false;
                self.status_toggle = self.status_toggle.wrapping_add(1);
                let t = self.status_toggle;
                (t & 1) | ((t & 2) << 2)
            }
            0x3c0 => self.ar_index,
            0x3c1 => self
                .ar
                .get((self.ar_index & 0x1f) as usize)
                .copied()
                .unwrap_or(0),
            0x3c2 => 0x00, // input status 0
            0x3c3 => self.enable,
            0x3c4 => self.seq_index,
            0x3c5 => self
                .seq
                .get(self.seq_index as usize)
                .copied()
                .unwrap_or(0xff),
            0x3c6 => self.dac_mask,
            0x3c7 => self.dac_state,
            0x3c8 => self.dac_write,
            0x3c9 => {
                let v = self.dac[self.dac_read as usize * 3 + self.dac_read_cycle as usize % 3];
                self.dac_read_cycle += 1;
                if self.dac_read_cycle >= 3 {
                    self.dac_read = self.dac_read.wrapping_add(1);
                    self.dac_read_cycle = 0;
                }
                v
            }
            0x3ca => self.feature,
            0x3cc => self.misc,
            0x3ce => self.gr_index,
            0x3cf => self.gr.get(self.gr_index as usize).copied().unwrap_or(0xff),
            _ => {
                log_odd_access!("vga: read of port {port:#x}");
                0xff
            }
        }
    }

    // ---- legacy memory window ----

    /// Offset into the window GR6 bits 2-3 map, for window offset `off`
    /// (0-0x1ffff from 0xa0000).
    fn window_offset(&self, off: u64) -> Option<u32> {
        let (base, len) = match (self.gr[6] >> 2) & 3 {
            0 => (0, 0x20000),
            1 => (0, 0x10000),
            2 => (0x10000, 0x8000),
            _ => (0x18000, 0x8000),
        };
        (off >= base && off < base + len).then(|| (off - base) as u32)
    }

    fn plane_byte(&self, off: u32, plane: usize) -> u8 {
        self.vram[(off & 0xffff) as usize * 4 + plane]
    }

    fn load_latches(&mut self, off: u32) {
        let o = (off & 0xffff) as usize * 4;
        self.latches.copy_from_slice(&self.vram[o..o + 4]);
    }

    /// A CPU read of the byte at window offset `off` (from 0xa0000).
    pub fn mem_read(&mut self, off: u64) -> u8 {
        if self.vbe_enabled() {
            if off >= 0x10000 {
                return 0xff;
            }
            let a = self.vbe[dispi::BANK as usize] as usize * 0x10000 + off as usize;
            return self.vram.get(a).copied().unwrap_or(0xff);
        }
        let Some(a) = self.window_offset(off) else {
            return 0xff;
        };
        if self.seq[4] & 8 != 0 {
            // Chain-4: plane a & 3 at plane offset a >> 2, VRAM byte a.
            self.load_latches(a >> 2);
            return self.vram[(a & 0x3ffff) as usize];
        }
        if self.gr[5] & 0x10 != 0 {
            // Odd/even: plane pair from GR4 bit 1, plane by address bit 0.
            let plane = ((self.gr[4] & 2) | (a as u8 & 1)) as usize;
            self.load_latches(a >> 1);
            return self.plane_byte(a >> 1, plane);
        }
        self.load_latches(a);
        if self.gr[5] & 8 == 0 {
            self.latches[(self.gr[4] & 3) as usize]
        } else {
            // Read mode 1: colour compare over the planes GR7 selects.
            let mut r = 0xffu8;
            for p in 0..4 {
                if self.gr[7] & (1 << p) != 0 {
                    let want = if self.gr[2] & (1 << p) != 0 { 0xff } else { 0 };
                    r &= !(self.latches[p] ^ want);
                }
            }
            r
        }
    }

    /// A CPU write of `v` at window offset `off` (from 0xa0000).
    pub fn mem_write(&mut self, off: u64, v: u8) {
        if self.vbe_enabled() {
            if off < 0x10000 {
                let a = self.vbe[dispi::BANK as usize] as usize * 0x10000 + off as usize;
                if let Some(b) = self.vram.get_mut(a) {
                    *b = v;
                    self.mark(a);
                }
            }
            return;
        }
        let Some(a) = self.window_offset(off) else {
            return;
        };
        let mask = self.seq[2];
        if self.seq[4] & 8 != 0 {
            let plane = a & 3;
            if mask & (1 << plane) != 0 {
                let o = (a & 0x3ffff) as usize;
                self.vram[o] = v;
                self.mark(o);
            }
            return;
        }
        if self.seq[4] & 4 == 0 {
            let plane = ((self.gr[4] & 2) | (a as u8 & 1)) as usize;
            if mask & (1 << plane) != 0 {
                let o = ((a >> 1) & 0xffff) as usize * 4 + plane;
                self.vram[o] = v;
                self.mark(o);
            }
            return;
        }
        // Planar: write modes 0-3 through the ALUs.
        let rot = self.gr[3] & 7;
        let func = (self.gr[3] >> 3) & 3;
        let mut bit_mask = self.gr[8];
        let mut vals = [0u8; 4];
        match self.gr[5] & 3 {
            0 => {
                let r = v.rotate_right(rot as u32);
                for (p, val) in vals.iter_mut().enumerate() {
                    *val = if self.gr[1] & (1 << p) != 0 {
                        if self.gr[0] & (1 << p) != 0 {
                            0xff
                        } else {
                            0
                        }
                    } else {
                        r
                    };
                }
            }
            1 => vals = self.latches,
            2 => {
                for (p, val) in vals.iter_mut().enumerate() {
                    *val = if v & (1 << p) != 0 { 0xff } else { 0 };
                }
            }
            _ => {
                bit_mask &= v.rotate_right(rot as u32);
                for (p, val) in vals.iter_mut().enumerate() {
                    *val = if self.gr[0] & (1 << p) != 0 { 0xff } else { 0 };
                }
            }
        }
        if self.gr[5] & 3 != 1 {
            for (p, val) in vals.iter_mut().enumerate() {
                let l = self.latches[p];
                let x = match func {
                    0 => *val,
                    1 => *val & l,
                    2 => *val | l,
                    _ => *val ^ l,
                };
                *val = (x & bit_mask) | (l & !bit_mask);
            }
        }
        let base = (a & 0xffff) as usize * 4;
        for (p, &val) in vals.iter().enumerate() {
            if mask & (1 << p) != 0 {
                self.vram[base + p] = val;
            }
        }
        self.mark(base);
    }

    // ---- VBE DISPI ----

    /// A read of DISPI register `index`.
    pub fn dispi_read(&self, index: u16) -> u16 {
        match index {
            dispi::XRES if self.vbe_caps => VBE_MAX_XRES,
            dispi::YRES if self.vbe_caps => VBE_MAX_YRES,
            dispi::BPP if self.vbe_caps => 32,
            0..=10 => self.vbe[index as usize],
            _ => {
                log_odd_access!("vga: read of DISPI register {index:#x}");
                0
            }
        }
    }

    /// A write of `v` to DISPI register `index`.
    pub fn dispi_write(&mut self, index: u16, v: u16) {
        let enabled = self.vbe_enabled();
        match index {
            dispi::ID => {
                if (0xb0c0..=dispi::ID_LATEST).contains(&v) {
                    self.vbe[0] = v;
                }
            }
            dispi::XRES if v <= VBE_MAX_XRES => self.vbe[1] = v,
            dispi::YRES if v <= VBE_MAX_YRES => self.vbe[2] = v,
            dispi::BPP => {
                let v = if v == 0 { 8 } else { v };
                if matches!(v, 8 | 15 | 16 | 24 | 32) {
                    self.vbe[3] = v;
                }
            }
            dispi::ENABLE => {
                self.vbe_caps = v & dispi::GETCAPS != 0;
                let v =
                    v & (dispi::ENABLED | dispi::DAC_8BIT | dispi::LFB_ENABLED | dispi::NOCLEARMEM);
                if v & dispi::ENABLED != 0 && !enabled {
                    let r = &mut self.vbe;
                    r[dispi::VIRT_WIDTH as usize] = r[dispi::XRES as usize];
                    r[dispi::X_OFFSET as usize] = 0;
                    r[dispi::Y_OFFSET as usize] = 0;
                    r[dispi::BANK as usize] = 0;
                    if v & dispi::NOCLEARMEM == 0 {
                        self.vram.fill(0);
                        self.dirty_pages.fill(!0);
                    }
                }
                self.vbe[4] = v;
            }
            dispi::BANK => {
                if (v as usize) < VRAM_SIZE >> 16 {
                    self.vbe[5] = v;
                } else {
                    log_odd_access!("vga: DISPI bank {v:#x} out of range");
                }
            }
            dispi::VIRT_WIDTH..=dispi::Y_OFFSET => self.vbe[index as usize] = v,
            _ => {
                log_odd_access!("vga: write {v:#x} to DISPI register {index:#x}");
                return;
            }
        }
        if self.vbe_enabled() {
            self.vbe_fixup();
        }
        if index != dispi::BANK {
            self.display_dirty = true;
        }
    }

    // ---- BAR 2 MMIO ----

    fn mmio_read(&mut self, off: u64, data: &mut [u8]) {
        match off {
            0x400..=0x41f => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.port_read(0x3c0 + (off as u16 - 0x400) + i as u16);
                }
            }
            0x500..=0x515 if off.is_multiple_of(2) => {
                let mut v = [0u8; 8];
                for i in 0..data.len().div_ceil(2) {
                    let r = self.dispi_read((off as u16 - 0x500) / 2 + i as u16);
                    v[i * 2..i * 2 + 2].copy_from_slice(&r.to_le_bytes());
                }
                let n = data.len();
                data.copy_from_slice(&v[..n]);
            }
            // QEMU's extended registers: size, then the endianness tag.
            0x600..=0x607 => {
                let regs = [8u32.to_le_bytes(), 0x1e1e_1e1eu32.to_le_bytes()].concat();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = regs.get((off - 0x600) as usize + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0), // no EDID
        }
    }

    fn mmio_write(&mut self, off: u64, data: &[u8]) {
        match off {
            0x400..=0x41f => {
                for (i, &b) in data.iter().enumerate() {
                    self.port_write(0x3c0 + (off as u16 - 0x400) + i as u16, b);
                }
            }
            0x500..=0x515 if off.is_multiple_of(2) && data.len() >= 2 => {
                for (i, c) in data.chunks_exact(2).enumerate() {
                    let index = (off as u16 - 0x500) / 2 + i as u16;
                    self.dispi_write(index, u16::from_le_bytes([c[0], c[1]]));
                }
            }
            0x604..=0x607 => {} // little endian is all there is
            _ => log_odd_access!("vga: MMIO write of {} at {off:#x}", data.len()),
        }
    }
}

impl Snapshot for Vga {
    type State = VgaState;
    fn snapshot(&self) -> VgaState {
        let mut config = vec![0u8; 256];
        self.config.read(0, &mut config);
        VgaState {
            misc: [self.misc, self.feature, self.enable],
            seq: (self.seq_index, self.seq.to_vec()),
            gr: (self.gr_index, self.gr.to_vec()),
            crtc: (self.crtc_index, self.crtc.to_vec()),
            ar: (self.ar_index, self.ar_flip, self.ar.to_vec()),
            dac_regs: [
                self.dac_mask,
                self.dac_read,
                self.dac_write,
                self.dac_read_cycle,
                self.dac_write_cycle,
                self.dac_state,
            ],
            dac_latch: self.dac_latch,
            dac: self.dac.to_vec(),
            latches: self.latches,
            vbe: (self.vbe_index, self.vbe.to_vec(), self.vbe_caps),
            config,
            vram: self.vram.clone(),
        }
    }

    fn restore(&mut self, s: VgaState) {
        fn copy<T: Copy>(dst: &mut [T], src: &[T]) {
            let n = dst.len().min(src.len());
            dst[..n].copy_from_slice(&src[..n]);
        }
        [self.misc, self.feature, self.enable] = s.misc;
        (self.seq_index, self.gr_index, self.crtc_index) = (s.seq.0, s.gr.0, s.crtc.0);
        copy(&mut self.seq, &s.seq.1);
        copy(&mut self.gr, &s.gr.1);
        copy(&mut self.crtc, &s.crtc.1);
        (self.ar_index, self.ar_flip) = (s.ar.0 & 0x3f, s.ar.1);
        copy(&mut self.ar, &s.ar.2);
        let d = s.dac_regs;
        (self.dac_mask, self.dac_read, self.dac_write) = (d[0], d[1], d[2]);
        (self.dac_read_cycle, self.dac_write_cycle, self.dac_state) = (d[3] % 3, d[4] % 3, d[5]);
        self.dac_latch = s.dac_latch;
        copy(&mut self.dac, &s.dac);
        self.latches = s.latches;
        self.vbe_index = s.vbe.0;
        copy(&mut self.vbe, &s.vbe.1);
        self.vbe[dispi::VIDEO_MEMORY_64K as usize] = (VRAM_SIZE >> 16) as u16;
        if (self.vbe[dispi::BANK as usize] as usize) >= VRAM_SIZE >> 16 {
            self.vbe[dispi::BANK as usize] = 0;
        }
        self.vbe_caps = s.vbe.2;
        if self.vbe_enabled() {
            self.vbe_fixup();
        }
        // Only the guest-writable bits of the header come back.
        for (i, &b) in s.config.iter().enumerate().take(256) {
            self.config.write(i, &[b]);
        }
        self.vram.fill(0);
        copy(&mut self.vram, &s.vram);
        self.dirty_pages.fill(!0);
        self.display_dirty = true;
    }
}

impl PciFunction for Vga {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn regions(&self, out: &mut Vec<PciRegion>) {
        self.config.active_regions(out);
    }

    fn region_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match index {
            0 => {
                let o = offset as usize;
                match self.vram.get(o..o.saturating_add(data.len())) {
                    Some(s) => data.copy_from_slice(s),
                    None => data.fill(0xff),
                }
            }
            2 => self.mmio_read(offset, data),
            ROM_BAR => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = offset
                        .checked_add(i as u64)
                        .and_then(|o| self.rom.get(o as usize))
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => {
                data.fill(0xff);
                log_odd_access!("vga: read of BAR {index} at {offset:#x}");
            }
        }
    }

    fn region_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        match index {
            0 => {
                let o = offset as usize;
                if let Some(s) = self.vram.get_mut(o..o.saturating_add(data.len())) {
                    s.copy_from_slice(data);
                    self.mark_range(o, data.len());
                }
            }
            2 => self.mmio_write(offset, data),
            _ => log_odd_access!("vga: write to BAR {index} at {offset:#x}"),
        }
    }
}

/// I/O ports 0x3b0-0x3df of a shared [`Vga`] (register at
/// [`VGA_PORTS_BASE`] for [`VGA_PORTS_LEN`] ports); word accesses are two
/// byte accesses, low port first.
pub struct VgaPorts(pub SharedVga);

impl BusDevice for VgaPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut v = lock(&self.0);
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = if o < VGA_PORTS_LEN as u64 {
                v.port_read(VGA_PORTS_BASE + o as u16)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = lock(&self.0);
        for (i, &b) in data.iter().enumerate() {
            let o = offset + i as u64;
            if o < VGA_PORTS_LEN as u64 {
                v.port_write(VGA_PORTS_BASE + o as u16, b);
            }
        }
    }
}

/// The legacy memory window 0xa0000-0xbffff of a shared [`Vga`] (register
/// at [`VGA_WINDOW_BASE`] for [`VGA_WINDOW_LEN`] bytes); wider accesses
/// are byte accesses in address order.
pub struct VgaWindow(pub SharedVga);

impl BusDevice for VgaWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut v = lock(&self.0);
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = if o < VGA_WINDOW_LEN {
                v.mem_read(o)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = lock(&self.0);
        for (i, &b) in data.iter().enumerate() {
            let o = offset + i as u64;
            if o < VGA_WINDOW_LEN {
                v.mem_write(o, b);
            }
        }
    }
}

/// The Bochs DISPI ports of a shared [`Vga`]: 16-bit index at 0x1ce
/// (offset 0), 16-bit data at 0x1cf (offset 1). Register at
/// [`VBE_PORTS_BASE`] for 2 ports.
pub struct VbePorts(pub SharedVga);

impl BusDevice for VbePorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = lock(&self.0);
        let val = match offset {
            0 => v.vbe_index,
            1 => v.dispi_read(v.vbe_index),
            _ => 0xffff,
        };
        let b = val.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = lock(&self.0);
        let val = match data {
            [lo] => *lo as u16,
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return,
        };
        match offset {
            0 => v.vbe_index = val,
            1 => {
                let i = v.vbe_index;
                v.dispi_write(i, val);
            }
            _ => log_odd_access!("vga: DISPI write at offset {offset:#x}"),
        }
    }
}

/// Code page 437 byte → Unicode character, as the VGA's ROM font draws it.
pub fn cp437(b: u8) -> char {
    const LOW: &str = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼";
    const HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";
    match b {
        0x00..=0x1f => LOW.chars().nth(b as usize).unwrap_or(' '),
        0x7f => '⌂',
        0x20..=0x7e => b as char,
        _ => HIGH.chars().nth(b as usize - 0x80).unwrap_or('?'),
    }
}

/// Register values of standard BIOS modes (IBM VGA Technical Reference,
/// "Video mode register tables"), programmed through the ports the way a
/// VGA BIOS does: for tests and host-side tools that need a picture
/// without a BIOS.
pub mod modes {
    use super::Vga;

    /// One mode's register file.
    #[derive(Debug, Clone, Copy)]
    pub struct ModeRegs {
        /// Miscellaneous output (0x3c2).
        pub misc: u8,
        /// Sequencer registers 0-4.
        pub seq: [u8; 5],
        /// CRTC registers 0-0x18.
        pub crtc: [u8; 25],
        /// Graphics controller registers 0-8.
        pub gr: [u8; 9],
        /// Attribute controller registers 0-0x14.
        pub ar: [u8; 21],
    }

    const AR_TEXT_PAL: [u8; 16] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
        0x3f,
    ];

    const fn ar(pal: [u8; 16], tail: [u8; 5]) -> [u8; 21] {
        let mut a = [0u8; 21];
        let mut i = 0;
        while i < 16 {
            a[i] = pal[i];
            i += 1;
        }
        while i < 21 {
            a[i] = tail[i - 16];
            i += 1;
        }
        a
    }

    /// Mode 3: 80×25 text, 9×16 cells (720×400).
    pub const MODE_03: ModeRegs = ModeRegs {
        misc: 0x67,
        seq: [0x03, 0x00, 0x03, 0x00, 0x02],
        crtc: [
            0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00,
            0x00, 0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
        ],
        gr: [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff],
        ar: ar(AR_TEXT_PAL, [0x0c, 0x00, 0x0f, 0x08, 0x00]),
    };

    /// Mode 12h: 640×480, 16 colours, planar.
    pub const MODE_12: ModeRegs = ModeRegs {
        misc: 0xe3,
        seq: [0x03, 0x01, 0x0f, 0x00, 0x06],
        crtc: [
            0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0x0b, 0x3e, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0xea, 0x8c, 0xdf, 0x28, 0x00, 0xe7, 0x04, 0xe3, 0xff,
        ],
        gr: [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0f, 0xff],
        ar: ar(AR_TEXT_PAL, [0x01, 0x00, 0x0f, 0x00, 0x00]),
    };

    /// Mode 13h: 320×200, 256 colours, chain-4.
    pub const MODE_13: ModeRegs = ModeRegs {
        misc: 0x63,
        seq: [0x03, 0x01, 0x0f, 0x00, 0x0e],
        crtc: [
            0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
        ],
        gr: [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0f, 0xff],
        ar: ar(
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            [0x41, 0x00, 0x0f, 0x00, 0x00],
        ),
    };

    /// Programs `m` through the ports: screen off, sequencer, misc output,
    /// CRTC (unprotected first), graphics controller, attribute controller,
    /// then the palette address source bit set and the screen on.
    pub fn program(vga: &mut Vga, m: &ModeRegs) {
        vga.port_write(0x3c4, 1);
        vga.port_write(0x3c5, m.seq[1] | 0x20);
        vga.port_write(0x3c2, m.misc);
        for (i, &v) in m.seq.iter().enumerate() {
            vga.port_write(0x3c4, i as u8);
            vga.port_write(0x3c5, if i == 1 { v | 0x20 } else { v });
        }
        let crtc = if m.misc & 1 != 0 { 0x3d4 } else { 0x3b4 };
        vga.port_write(crtc, 0x11);
        vga.port_write(crtc + 1, 0);
        for (i, &v) in m.crtc.iter().enumerate() {
            vga.port_write(crtc, i as u8);
            vga.port_write(crtc + 1, v);
        }
        for (i, &v) in m.gr.iter().enumerate() {
            vga.port_write(0x3ce, i as u8);
            vga.port_write(0x3cf, v);
        }
        vga.port_read(crtc + 6);
        for (i, &v) in m.ar.iter().enumerate() {
            vga.port_write(0x3c0, i as u8);
            vga.port_write(0x3c0, v);
        }
        vga.port_write(0x3c0, 0x20);
        vga.port_write(0x3c4, 1);
        vga.port_write(0x3c5, m.seq[1]);
    }

    /// Loads `font` (`height` bytes a glyph, up to 256 glyphs) into plane 2
    /// map 0 the way a BIOS does (plane 2 only, sequential addressing at
    /// 0xa0000), then restores the text-mode settings of mode 3.
    pub fn load_font(vga: &mut Vga, font: &[u8], height: usize) {
        let set = |vga: &mut Vga, idx: u16, reg: u8, v: u8| {
            vga.port_write(idx, reg);
            vga.port_write(idx + 1, v);
        };
        set(vga, 0x3c4, 2, 0x04);
        set(vga, 0x3c4, 4, 0x07);
        set(vga, 0x3ce, 4, 0x02);
        set(vga, 0x3ce, 5, 0x00);
        set(vga, 0x3ce, 6, 0x04);
        for (ch, glyph) in font.chunks(height.max(1)).take(256).enumerate() {
            for (line, &b) in glyph.iter().enumerate() {
                vga.mem_write((ch * 32 + line) as u64, b);
            }
        }
        set(vga, 0x3c4, 2, 0x03);
        set(vga, 0x3c4, 4, 0x02);
        set(vga, 0x3ce, 4, 0x00);
        set(vga, 0x3ce, 5, 0x10);
        set(vga, 0x3ce, 6, 0x0e);
    }

    /// Sets DAC entries from `first` on to 6-bit `rgb` triples.
    pub fn set_dac(vga: &mut Vga, first: u8, rgb: &[[u8; 3]]) {
        vga.port_write(0x3c8, first);
        for c in rgb {
            for &v in c {
                vga.port_write(0x3c9, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::modes::*;
    use super::*;
    use crate::pci::PciBus;

    /// Writes a string to the text screen at (row, col) with `attr`.
    fn put_text(v: &mut Vga, row: u64, col: u64, s: &str, attr: u8) {
        for (i, b) in s.bytes().enumerate() {
            let a = 0x18000 + (row * 80 + col + i as u64) * 2;
            v.mem_write(a, b);
            v.mem_write(a + 1, attr);
        }
    }

    fn text_vga() -> Vga {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_03);
        // A font where glyph n's line l is n ^ l.
        let font: Vec<u8> = (0..256 * 16).map(|i| ((i / 16) ^ (i % 16)) as u8).collect();
        load_font(&mut v, &font, 16);
        v
    }

    #[test]
    fn mode_3_geometry_font_text_and_cursor() {
        let mut v = text_vga();
        put_text(&mut v, 0, 0, "Hello, VGA", 0x07);
        put_text(&mut v, 24, 76, "end\u{7f}", 0x1f);
        v.port_write(0x3d4, 0x0e);
        v.port_write(0x3d5, 0x00);
        v.port_write(0x3d4, 0x0f);
        v.port_write(0x3d5, 85); // row 1, column 5
        let DisplayMode::Text(t) = v.mode() else {
            panic!("not text: {:?}", v.mode())
        };
        assert_eq!(
            (t.cols, t.rows, t.char_height, t.char_width),
            (80, 25, 16, 9)
        );
        assert_eq!((t.start, t.stride, t.font_a, t.font_b), (0, 80, 0, 0));
        assert!(t.line_graphics && t.blink);
        assert_eq!(
            t.cursor,
            Some(Cursor {
                row: 1,
                col: 5,
                start: 13,
                end: 14
            })
        );
        let screen = v.text_screen().unwrap();
        assert_eq!(screen.len(), 25);
        assert!(screen[0].starts_with("Hello, VGA "));
        assert_eq!(screen[0].chars().count(), 80);
        assert!(screen[24].ends_with("end⌂"));
        assert_eq!(v.text_cell(76 + 24 * 80), (b'e', 0x1f));
        // The font went to plane 2, not over the text.
        assert_eq!(v.glyph_row(0, b'A', 3), b'A' ^ 3);
        assert_eq!(v.vram()[2], 0);
        // Reading back through odd/even addressing.
        assert_eq!(v.mem_read(0x18000), b'H');
        assert_eq!(v.mem_read(0x18001), 0x07);
        // Cursor disable bit.
        v.port_write(0x3d4, 0x0a);
        v.port_write(0x3d5, 0x20);
        let DisplayMode::Text(t) = v.mode() else {
            panic!()
        };
        assert_eq!(t.cursor, None);
        // Palette address source cleared: blank.
        v.port_read(0x3da);
        v.port_write(0x3c0, 0x00);
        assert_eq!(v.mode(), DisplayMode::Blank);
        assert_eq!(v.text_screen(), None);
    }

    #[test]
    fn attribute_flip_flop_status_and_dac_cycles() {
        let mut v = text_vga();
        v.port_read(0x3da);
        v.port_write(0x3c0, 0x21);
        v.port_write(0x3c0, 0x15);
        assert_eq!(v.port_read(0x3c0), 0x21);
        assert_eq!(v.port_read(0x3c1), 0x15);
        // The next write is an index again; reading 0x3da resets mid-way.
        v.port_write(0x3c0, 0x22);
        v.port_read(0x3da);
        v.port_write(0x3c0, 0x23);
        assert_eq!(v.port_read(0x3c0), 0x23);
        // Retrace bit 3 and bit 0 both take both values within 4 reads.
        let reads: Vec<u8> = (0..4).map(|_| v.port_read(0x3da)).collect();
        assert!(reads.iter().any(|r| r & 8 != 0) && reads.iter().any(|r| r & 8 == 0));
        assert!(reads.iter().any(|r| r & 1 != 0) && reads.iter().any(|r| r & 1 == 0));
        // DAC: three writes per entry, 6 bits kept, index auto-increments.
        set_dac(&mut v, 10, &[[0x3f, 0x7f, 0x01], [1, 2, 3]]);
        assert_eq!(v.port_read(0x3c8), 12);
        v.port_write(0x3c7, 10);
        assert_eq!(v.port_read(0x3c7), 3);
        let back: Vec<u8> = (0..6).map(|_| v.port_read(0x3c9)).collect();
        assert_eq!(back, [0x3f, 0x3f, 0x01, 1, 2, 3]);
        assert_eq!(v.dac_rgb(10), [255, 255, 4]);
        // Attribute palette: colour 6 maps to DAC 0x14, 8 to 0x38.
        assert_eq!(v.attribute_color(6), 0x14);
        assert_eq!(v.attribute_color(8), 0x38);
        v.port_write(0x3c6, 0x0f);
        assert_eq!(v.attribute_color(8), 0x08);
    }

    #[test]
    fn crtc_follows_misc_output_and_write_protect() {
        let mut v = text_vga();
        v.port_write(0x3b4, 0x13);
        assert_eq!(v.port_read(0x3b4), 0xff); // mono ports off in colour mode
        v.port_write(0x3d4, 0x11);
        v.port_write(0x3d5, 0x8e); // protect CR0-7
        v.port_write(0x3d4, 0x01);
        v.port_write(0x3d5, 0x27);
        assert_eq!(v.port_read(0x3d5), 0x4f);
        v.port_write(0x3d4, 0x07);
        v.port_write(0x3d5, 0x00);
        assert_eq!(v.port_read(0x3d5), 0x0f); // only bit 4 writable
        v.port_write(0x3c2, 0x66); // mono addressing
        assert_eq!(v.port_read(0x3cc), 0x66);
        v.port_write(0x3b4, 0x13);
        assert_eq!(v.port_read(0x3b5), 0x28);
        assert_eq!(v.port_read(0x3d5), 0xff);
    }

    #[test]
    fn mode_13h_chain_4() {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_13);
        assert_eq!(
            v.mode(),
            DisplayMode::Graphics(GraphicsMode {
                kind: GraphicsKind::Byte256,
                width: 320,
                height: 200,
                start: 0,
                stride: 80
            })
        );
        v.take_dirty();
        for i in 0..8u64 {
            v.mem_write(321 + i, 0x40 + i as u8);
        }
        assert_eq!(
            &v.vram()[321..329],
            &[0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47]
        );
        assert_eq!(v.mem_read(323), 0x42);
        let d = v.take_dirty();
        assert!(d.page(0) && !d.page(1) && !d.display);
        // The sequencer's plane mask applies in chain-4 too.
        v.port_write(0x3c4, 2);
        v.port_write(0x3c5, 0x01);
        v.mem_write(1, 0x99);
        v.mem_write(4, 0x99);
        assert_eq!((v.vram()[1], v.vram()[4]), (0, 0x99));
    }

    #[test]
    fn mode_12h_planar_write_and_read_modes() {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_12);
        let DisplayMode::Graphics(g) = v.mode() else {
            panic!()
        };
        assert_eq!(
            (g.kind, g.width, g.height, g.stride),
            (GraphicsKind::Planar16, 640, 480, 80)
        );
        let gr = |v: &mut Vga, i: u8, x: u8| {
            v.port_write(0x3ce, i);
            v.port_write(0x3cf, x);
        };
        // Write mode 0 with set/reset on planes 0 and 2 (colour 5).
        gr(&mut v, 0, 0x05);
        gr(&mut v, 1, 0x0f);
        v.mem_write(10, 0xff);
        assert_eq!(&v.vram()[40..44], &[0xff, 0, 0xff, 0]);
        // Write mode 0 without set/reset, rotate 4, bit mask 0xf0.
        gr(&mut v, 1, 0);
        gr(&mut v, 3, 0x04);
        gr(&mut v, 8, 0xf0);
        v.mem_read(11); // latches = 0
        v.mem_write(11, 0x0c); // rotated: 0xc0
        assert_eq!(&v.vram()[44..48], &[0xc0; 4]);
        // Write mode 2: colour 0x0a in the bits the mask selects, others from the latches.
        gr(&mut v, 3, 0);
        gr(&mut v, 5, 0x02);
        gr(&mut v, 8, 0x0f);
        v.mem_read(10); // latches = 0xff, 0, 0xff, 0
        v.mem_write(10, 0x0a);
        assert_eq!(&v.vram()[40..44], &[0xf0, 0x0f, 0xf0, 0x0f]);
        // Write mode 1 copies the latches.
        gr(&mut v, 5, 0x01);
        v.mem_read(11);
        v.mem_write(12, 0);
        assert_eq!(&v.vram()[48..52], &[0xc0; 4]);
        // Read mode 0 picks a plane; read mode 1 compares colours.
        gr(&mut v, 5, 0x00);
        gr(&mut v, 4, 1);
        assert_eq!(v.mem_read(10), 0x0f);
        gr(&mut v, 5, 0x08);
        gr(&mut v, 2, 0x0a); // colour 1010: planes 1 and 3 set
        gr(&mut v, 7, 0x0f);
        assert_eq!(v.mem_read(10), 0x0f);
        gr(&mut v, 7, 0x01); // only plane 0 compared (want 0)
        assert_eq!(v.mem_read(10), 0x0f);
        gr(&mut v, 7, 0x00);
        assert_eq!(v.mem_read(10), 0xff);
        // Write mode 3: set/reset colour, rotated data ANDed with the bit mask.
        gr(&mut v, 5, 0x03);
        gr(&mut v, 0, 0x03);
        gr(&mut v, 8, 0xff);
        v.mem_read(20);
        v.mem_write(20, 0x81);
        assert_eq!(&v.vram()[80..84], &[0x81, 0x81, 0, 0]);
        // Logical function XOR with the latches (write mode 2).
        gr(&mut v, 5, 0x02);
        gr(&mut v, 3, 0x18);
        v.mem_read(20);
        v.mem_write(20, 0x01);
        assert_eq!(&v.vram()[80..84], &[0x7e, 0x81, 0, 0]);
    }

    #[test]
    fn dispi_registers_caps_enable_and_banks() {
        let shared = Arc::new(Mutex::new(Vga::new(Vec::new())));
        let mut ports = VbePorts(shared.clone());
        let rd = |p: &mut VbePorts, i: u16| {
            p.write(0, &i.to_le_bytes());
            let mut d = [0u8; 2];
            p.read(1, &mut d);
            u16::from_le_bytes(d)
        };
        let wr = |p: &mut VbePorts, i: u16, x: u16| {
            p.write(0, &i.to_le_bytes());
            p.write(1, &x.to_le_bytes());
        };
        assert_eq!(rd(&mut ports, dispi::ID), 0xb0c5);
        wr(&mut ports, dispi::ID, 0xb0c2);
        assert_eq!(rd(&mut ports, dispi::ID), 0xb0c2);
        wr(&mut ports, dispi::ID, 0x1234);
        assert_eq!(rd(&mut ports, dispi::ID), 0xb0c2);
        assert_eq!(rd(&mut ports, dispi::VIDEO_MEMORY_64K), 256);
        wr(&mut ports, dispi::ENABLE, dispi::GETCAPS);
        assert_eq!(rd(&mut ports, dispi::XRES), 2560);
        assert_eq!(rd(&mut ports, dispi::YRES), 1600);
        assert_eq!(rd(&mut ports, dispi::BPP), 32);
        wr(&mut ports, dispi::ENABLE, 0);
        wr(&mut ports, dispi::XRES, 800);
        wr(&mut ports, dispi::YRES, 600);
        wr(&mut ports, dispi::BPP, 32);
        assert_eq!(rd(&mut ports, dispi::XRES), 800);
        lock(&shared).vram[100] = 7;
        wr(
            &mut ports,
            dispi::ENABLE,
            dispi::ENABLED | dispi::LFB_ENABLED,
        );
        let v = lock(&shared);
        assert_eq!(v.vram[100], 0, "enable clears VRAM");
        assert_eq!(
            v.mode(),
            DisplayMode::Vbe(VbeMode {
                width: 800,
                height: 600,
                bpp: 32,
                stride: 3200,
                offset: 0
            })
        );
        assert_eq!(v.dispi_read(dispi::VIRT_WIDTH), 800);
        assert_eq!(v.dispi_read(dispi::VIRT_HEIGHT), (VRAM_SIZE / 3200) as u16);
        drop(v);
        // Banked window: bank 3 shows VRAM 0x30000.
        wr(&mut ports, dispi::BANK, 3);
        let mut win = VgaWindow(shared.clone());
        win.write(0x10, &[1, 2, 3, 4]);
        assert_eq!(&lock(&shared).vram[0x30010..0x30014], &[1, 2, 3, 4]);
        let mut b = [0u8; 2];
        win.read(0x11, &mut b);
        assert_eq!(b, [2, 3]);
        wr(&mut ports, dispi::BANK, 256); // out of range: ignored
        assert_eq!(rd(&mut ports, dispi::BANK), 3);
        // Panning and a wider virtual screen.
        wr(&mut ports, dispi::VIRT_WIDTH, 1024);
        wr(&mut ports, dispi::X_OFFSET, 8);
        wr(&mut ports, dispi::Y_OFFSET, 2);
        let DisplayMode::Vbe(m) = lock(&shared).mode() else {
            panic!()
        };
        assert_eq!((m.stride, m.offset), (4096, 2 * 4096 + 32));
        // Re-enabling with NOCLEARMEM keeps VRAM; disabling goes back to VGA.
        wr(&mut ports, dispi::ENABLE, 0);
        assert_eq!(lock(&shared).mode(), DisplayMode::Blank);
        wr(&mut ports, dispi::BPP, 16);
        wr(
            &mut ports,
            dispi::ENABLE,
            dispi::ENABLED | dispi::NOCLEARMEM,
        );
        assert_eq!(lock(&shared).vram[0x30010], 1);
        let DisplayMode::Vbe(m) = lock(&shared).mode() else {
            panic!()
        };
        assert_eq!((m.bpp, m.stride, m.offset), (16, 1600, 0));
        // 8-bit DAC.
        wr(
            &mut ports,
            dispi::ENABLE,
            dispi::ENABLED | dispi::NOCLEARMEM | dispi::DAC_8BIT,
        );
        let mut v = lock(&shared);
        set_dac(&mut v, 1, &[[0xff, 0x80, 0x01]]);
        assert_eq!(v.dac_rgb(1), [0xff, 0x80, 0x01]);
    }

    fn cfg_addr(dev: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | dev << 11 | reg).to_le_bytes()
    }

    fn cfg_read(b: &mut PciBus, reg: u32) -> u32 {
        b.write(0, &cfg_addr(2, reg));
        let mut d = [0u8; 4];
        b.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn cfg_write(b: &mut PciBus, reg: u32, v: u32) {
        b.write(0, &cfg_addr(2, reg));
        b.write(4, &v.to_le_bytes());
    }

    #[test]
    fn pci_function_bars_lfb_mmio_and_rom() {
        let mut rom = vec![0u8; 40_000];
        rom[0] = 0x55;
        rom[1] = 0xaa;
        rom[39_999] = 0x77;
        let vga = Arc::new(Mutex::new(Vga::new(rom)));
        let mut bus = PciBus::new();
        bus.attach(2, 0, vga.clone());
        let mut mem = bus.window(Space::Memory);
        assert_eq!(cfg_read(&mut bus, 0), 0x1111_1234);
        assert_eq!(cfg_read(&mut bus, 8), 0x0300_0002);
        assert_eq!(cfg_read(&mut bus, 0x2c), 0x1100_1af4);
        for (reg, size) in [
            (0x10, 0xff00_0008u32),
            (0x18, 0xffff_f000),
            (0x30, 0xffff_0001),
        ] {
            cfg_write(&mut bus, reg, !0);
            assert_eq!(cfg_read(&mut bus, reg), size, "BAR at {reg:#x}");
        }
        assert_eq!(cfg_read(&mut bus, 0x14), 0);
        cfg_write(&mut bus, 0x10, 0xfd00_0000);
        cfg_write(&mut bus, 0x18, 0xfebf_0000);
        cfg_write(&mut bus, 0x30, 0xfeb0_0001);
        cfg_write(&mut bus, 0x04, 2);
        // The LFB is VRAM.
        mem.write(0xfd12_3456, &[9, 8, 7, 6]);
        assert_eq!(&lock(&vga).vram()[0x12_3456..0x12_345a], &[9, 8, 7, 6]);
        let mut d = [0u8; 8];
        mem.read(0xfd12_3454, &mut d);
        assert_eq!(d, [0, 0, 9, 8, 7, 6, 0, 0]);
        assert!(lock(&vga).take_dirty().page(0x123));
        // ROM: signature, content, zero padding.
        let mut w = [0u8; 2];
        mem.read(0xfeb0_0000, &mut w);
        assert_eq!(w, [0x55, 0xaa]);
        mem.read(0xfeb0_0000 + 39_999, &mut w);
        assert_eq!(w, [0x77, 0]);
        mem.write(0xfeb0_0000, &[0, 0]);
        mem.read(0xfeb0_0000, &mut w);
        assert_eq!(w, [0x55, 0xaa]);
        // MMIO: DISPI registers at 0x500 + 2 * index, VGA ports at 0x400.
        mem.read(0xfebf_0500, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0xb0c5);
        mem.write(0xfebf_0502, &1024u16.to_le_bytes());
        assert_eq!(lock(&vga).dispi_read(dispi::XRES), 1024);
        mem.write(0xfebf_0408, &[5]); // 0x3c8
        for c in [1, 2, 3] {
            mem.write(0xfebf_0409, &[c]); // 0x3c9
        }
        assert_eq!(lock(&vga).port_read(0x3c8), 6);
        let mut q = [0u8; 4];
        mem.read(0xfebf_0600, &mut q);
        assert_eq!(u32::from_le_bytes(q), 8);
    }

    #[test]
    fn real_vga_bios_rom_bar() {
        let path = "/root/.cache/vireo/qemu72/root/usr/share/seabios/vgabios-stdvga.bin";
        let Ok(rom) = std::fs::read(path) else {
            eprintln!("note: {path} absent, skipping");
            return;
        };
        let len = rom.len();
        let mut v = Vga::new(rom);
        let mut c = [0u8; 4];
        v.config_write(0x30, &[0xff; 4]);
        v.config_read(0x30, &mut c);
        let size = !(u32::from_le_bytes(c) & !0x7ff) + 1;
        assert_eq!(size as usize, len.next_power_of_two());
        let mut sig = [0u8; 3];
        v.region_read(ROM_BAR, 0, &mut sig);
        assert_eq!(&sig[..2], &[0x55, 0xaa]);
        assert_eq!(sig[2] as usize * 512, len.div_ceil(512) * 512);
    }

    #[test]
    fn dirty_tracking_and_display_flag() {
        let mut v = text_vga();
        let d = v.take_dirty();
        assert!(d.display && d.any_pages());
        let d = v.take_dirty();
        assert!(!d.display && !d.any_pages());
        put_text(&mut v, 0, 0, "x", 7);
        // Cursor moves do not dirty the display.
        v.port_write(0x3d4, 0x0f);
        v.port_write(0x3d5, 3);
        let d = v.take_dirty();
        assert!(!d.display && d.page(0) && !d.page(1));
        assert!(d.range(0, 1) && !d.range(4096, 8192) && !d.range(5, 5));
        set_dac(&mut v, 0, &[[1, 1, 1]]);
        assert!(v.take_dirty().display);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut v = text_vga();
        put_text(&mut v, 3, 3, "saved", 0x1e);
        set_dac(&mut v, 7, &[[10, 20, 30]]);
        v.dispi_write(dispi::XRES, 1024);
        let s = v.snapshot();
        let mut w = Vga::new(Vec::new());
        w.restore(s.clone());
        assert_eq!(w.text_screen(), v.text_screen());
        assert_eq!(w.dac_rgb(7), v.dac_rgb(7));
        assert_eq!(w.mode(), v.mode());
        assert_eq!(w.dispi_read(dispi::XRES), 1024);
        // A hostile state does not panic.
        let mut bad = s;
        bad.seq.1 = vec![0xff; 100];
        bad.vram = vec![1; 10];
        bad.vbe.1 = vec![0xffff; 3];
        bad.dac = Vec::new();
        w.restore(bad);
        let _ = w.mode();
    }

    #[test]
    fn cp437_tables() {
        assert_eq!(cp437(b'A'), 'A');
        assert_eq!(cp437(0x01), '☺');
        assert_eq!(cp437(0x1f), '▼');
        assert_eq!(cp437(0xc4), '─');
        assert_eq!(cp437(0xdb), '█');
        assert_eq!(cp437(0xff), '\u{a0}');
        assert_eq!(cp437(0xe1), 'ß');
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let shared = Arc::new(Mutex::new(Vga::new(vec![0x55, 0xaa, 1])));
        let mut ports = VgaPorts(shared.clone());
        let mut win = VgaWindow(shared.clone());
        let mut vbe = VbePorts(shared.clone());
        let mut x = 0x2468_ace1u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = [1usize, 2, 4, 8][(x >> 8) as usize % 4];
            let v = (x.rotate_left(11) as u64 | (x as u64) << 32).to_le_bytes();
            let mut d = [0u8; 8];
            let write = x & 0x10 != 0;
            match x % 7 {
                0..=2 => {
                    let off = (x >> 12) as u64 % 0x31;
                    if write {
                        ports.write(off, &v[..len]);
                    } else {
                        ports.read(off, &mut d[..len]);
                    }
                }
                3 | 4 => {
                    let off = (x >> 12) as u64 % 0x20001;
                    if write {
                        win.write(off, &v[..len]);
                    } else {
                        win.read(off, &mut d[..len]);
                    }
                }
                5 => {
                    let off = (x >> 12) as u64 % 3;
                    if write {
                        vbe.write(off, &v[..len]);
                    } else {
                        vbe.read(off, &mut d[..len]);
                    }
                }
                _ => {
                    let mut g = lock(&shared);
                    let index = [0usize, 2, ROM_BAR, 3][(x >> 20) as usize % 4];
                    let off = (x >> 4) as u64 % 0x100_0010;
                    if write {
                        g.region_write(index, off, &v[..len]);
                    } else {
                        g.region_read(index, off, &mut d[..len]);
                    }
                    g.config_write((x >> 24) as usize, &v[..len.min(4)]);
                }
            }
            if x.is_multiple_of(97) {
                let g = lock(&shared);
                let _ = g.mode();
                let _ = g.text_screen();
            }
        }
    }
}
