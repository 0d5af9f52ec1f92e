//! The host-side display: a [`Surface`] of RGBA pixels with an update
//! sequence and the rectangles each update changed, and the [`Renderer`]
//! that draws the VGA's current mode into it, redrawing only what changed
//! (text cells, VRAM pages, blink phases), plus PNG and PPM (P6) export.
//!
//! Clients (GUI, VNC, screendump) share the surface as a [`SharedSurface`]
//! and ask [`Surface::changes_since`] for what to copy.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use vireo_devices::vga::{
    Cursor, DisplayMode, GraphicsKind, GraphicsMode, TextMode, VbeMode, Vga, VgaDirty,
};

/// A rectangle of the surface, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    fn union(self, o: Rect) -> Rect {
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        let r = (self.x + self.w).max(o.x + o.w);
        let b = (self.y + self.h).max(o.y + o.h);
        Rect {
            x,
            y,
            w: r - x,
            h: b - y,
        }
    }
}

/// Rectangles kept for clients that lag behind.
const HISTORY: usize = 512;
/// More rectangles than this in one update become their bounding box.
const MAX_RECTS_PER_UPDATE: usize = 64;

/// The picture: `width` × `height` RGBA8 pixels (row-major, 4 bytes each,
/// alpha 255), with a sequence number bumped by every update and a
/// bounded history of the rectangles updates changed.
pub struct Surface {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    seq: u64,
    /// Clients at a sequence below this must redraw everything.
    floor: u64,
    history: VecDeque<(u64, Rect)>,
    pending: Vec<Rect>,
}

/// A [`Surface`] shared between the renderer and its clients.
pub type SharedSurface = Arc<RwLock<Surface>>;

impl Surface {
    /// A black surface of `width` × `height`.
    pub fn new(width: u32, height: u32) -> Self {
        let mut s = Surface {
            width: 0,
            height: 0,
            pixels: Vec::new(),
            seq: 0,
            floor: 0,
            history: VecDeque::new(),
            pending: Vec::new(),
        };
        s.resize(width, height);
        s
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels: RGBA, row-major, `width * 4` bytes a row.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel at (`x`, `y`) as RGBA; `None` outside the surface.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        let mut p = [0u8; 4];
        p.copy_from_slice(&self.pixels[i..i + 4]);
        Some(p)
    }

    /// The sequence number of the latest update.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The rectangles changed by updates after `seq` (a value [`Surface::seq`]
    /// returned), or `None` when the client must take everything: after a
    /// resize, or when it is further behind than the kept history.
    pub fn changes_since(&self, seq: u64) -> Option<Vec<Rect>> {
        if seq < self.floor {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|(s, _)| *s > seq)
                .map(|(_, r)| *r)
                .collect(),
        )
    }

    /// Changes the size (at most 16384 × 16384), clearing to black; every
    /// client redraws everything.
    pub fn resize(&mut self, width: u32, height: u32) {
        let (width, height) = (width.min(16384), height.min(16384));
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize(width as usize * height as usize * 4, 0);
        for p in self.pixels.chunks_exact_mut(4) {
            p[3] = 0xff;
        }
        self.seq += 1;
        self.floor = self.seq;
        self.history.clear();
        self.pending.clear();
    }

    #[inline]
    fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = (y as usize * self.width as usize + x as usize) * 4;
        if let Some(p) = self.pixels.get_mut(i..i + 3) {
            p.copy_from_slice(&rgb);
        }
    }

    /// Records `r` as changed in the update being drawn.
    fn mark(&mut self, r: Rect) {
        self.pending.push(r);
    }

    /// Ends the update being drawn: if anything changed, bumps the sequence
    /// and files its rectangles.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.seq += 1;
        let mut rects = std::mem::take(&mut self.pending);
        if rects.len() > MAX_RECTS_PER_UPDATE {
            let all = rects.iter().copied().reduce(Rect::union);
            rects = all.into_iter().collect();
        }
        for r in rects {
            if self.history.len() >= HISTORY {
                if let Some((s, _)) = self.history.pop_front() {
                    self.floor = self.floor.max(s);
                }
            }
            self.history.push_back((self.seq, r));
        }
    }

    /// The picture as a binary PPM (P6) image.
    pub fn to_ppm(&self) -> Vec<u8> {
        let mut out = format!("P6\n{} {}\n255\n", self.width, self.height).into_bytes();
        out.reserve(self.pixels.len() / 4 * 3);
        for p in self.pixels.chunks_exact(4) {
            out.extend_from_slice(&p[..3]);
        }
        out
    }

    /// Writes the picture as a PPM (P6) file (QMP `screendump`'s default).
    pub fn write_ppm(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_ppm())
    }

    /// Writes the picture as an RGBA PNG file.
    pub fn write_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        self.encode_png(file)
    }

    /// Encodes the picture as an RGBA PNG into `w`.
    pub fn encode_png<W: Write>(&self, w: W) -> std::io::Result<()> {
        let mut enc = png::Encoder::new(w, self.width.max(1), self.height.max(1));
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        if self.width == 0 || self.height == 0 {
            writer
                .write_image_data(&[0, 0, 0, 0xff])
                .map_err(std::io::Error::other)?;
        } else {
            writer
                .write_image_data(&self.pixels)
                .map_err(std::io::Error::other)?;
        }
        writer.finish().map_err(std::io::Error::other)
    }
}

/// Frames per second of the VGA's vertical refresh, for blink timing.
const REFRESH_HZ: u64 = 60;
/// Size of the blank picture.
const BLANK_SIZE: (u32, u32) = (640, 480);

/// What the renderer drew last time, to redraw only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drawn {
    None,
    Blank,
    Text(TextMode),
    Graphics(GraphicsMode),
    Vbe(VbeMode),
}

/// Draws a [`Vga`] into a [`Surface`], keeping what it last drew.
pub struct Renderer {
    drawn: Drawn,
    /// Per text cell: character, attribute, cursor and blink state drawn.
    cells: Vec<u32>,
    /// Glyph rows of font maps A and B (256 × 32 bytes each).
    font: Vec<u8>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A renderer that has drawn nothing yet.
    pub fn new() -> Self {
        Renderer {
            drawn: Drawn::None,
            cells: Vec::new(),
            font: vec![0; 2 * 256 * 32],
        }
    }

    /// Locks both and renders (see [`Renderer::render`]).
    pub fn render_shared(&mut self, surface: &SharedSurface, vga: &Mutex<Vga>, now_ms: u64) {
        let mut v = vga.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = surface.write().unwrap_or_else(|e| e.into_inner());
        self.render(&mut s, &mut v, now_ms);
    }

    /// Draws what changed in `vga` since the last call into `surface` and
    /// files the changed rectangles as one update. `now_ms` drives the text
    /// cursor (a 16-frame period) and blinking characters (32 frames).
    /// A mode or size change resizes the surface.
    pub fn render(&mut self, surface: &mut Surface, vga: &mut Vga, now_ms: u64) {
        let dirty = vga.take_dirty();
        let mode = vga.mode();
        let frame = now_ms.saturating_mul(REFRESH_HZ) / 1000;
        match mode {
            DisplayMode::Blank => {
                if self.drawn != Drawn::Blank {
                    let (w, h) = if surface.width() == 0 || surface.height() == 0 {
                        BLANK_SIZE
                    } else {
                        (surface.width(), surface.height())
                    };
                    surface.resize(w, h);
                    self.drawn = Drawn::Blank;
                }
            }
            DisplayMode::Text(t) => self.text(surface, vga, &dirty, t, frame),
            DisplayMode::Graphics(g) => self.graphics(surface, vga, &dirty, g),
            DisplayMode::Vbe(m) => self.vbe(surface, vga, &dirty, m),
        }
        surface.commit();
    }

    /// Resizes for a new mode; true when everything must be drawn.
    fn enter(&mut self, surface: &mut Surface, drawn: Drawn, w: u32, h: u32) -> bool {
        if self.drawn == drawn && surface.width() == w && surface.height() == h {
            return false;
        }
        if surface.width() != w || surface.height() != h {
            surface.resize(w, h);
        }
        self.drawn = drawn;
        true
    }

    fn text(
        &mut self,
        surface: &mut Surface,
        vga: &Vga,
        dirty: &VgaDirty,
        t: TextMode,
        frame: u64,
    ) {
        let key = TextMode { cursor: None, ..t };
        let (cw, chh) = (t.char_width, t.char_height);
        let mut full = self.enter(surface, Drawn::Text(key), t.cols * cw, t.rows * chh);
        full |= dirty.display;
        // Fonts: re-read when their plane-2 bytes may have changed.
        for (slot, base) in [t.font_a, t.font_b].into_iter().enumerate() {
            let start = base as usize * 4;
            if full || dirty.range(start, start + 256 * 32 * 4) {
                for ch in 0..256u32 {
                    for line in 0..32u32 {
                        let b = vga.glyph_row(base, ch as u8, line);
                        let i = slot * 8192 + (ch * 32 + line) as usize;
                        if self.font[i] != b {
                            self.font[i] = b;
                            full = true;
                        }
                    }
                }
            }
        }
        let n = (t.cols * t.rows) as usize;
        if full || self.cells.len() != n {
            self.cells.clear();
            self.cells.resize(n, u32::MAX);
        }
        let cursor_on = (frame / 8).is_multiple_of(2);
        let blink_on = (frame / 16).is_multiple_of(2);
        let colors: Vec<[u8; 3]> = (0..16)
            .map(|i| vga.dac_rgb(vga.attribute_color(i)))
            .collect();
        let mut rects = Vec::new();
        for row in 0..t.rows {
            let mut run: Option<Rect> = None;
            for col in 0..t.cols {
                let (ch, attr) = vga.text_cell(t.start + row * t.stride + col);
                let cur = t
                    .cursor
                    .filter(|c| cursor_on && c.row == row && c.col == col);
                let blink_hidden = t.blink && attr & 0x80 != 0 && !blink_on;
                let mut k = ch as u32 | (attr as u32) << 8 | (blink_hidden as u32) << 16;
                if let Some(c) = cur {
                    k |= 1 << 17 | (c.start as u32) << 18 | (c.end as u32) << 23;
                }
                let i = (row * t.cols + col) as usize;
                if self.cells[i] == k {
                    if let Some(r) = run.take() {
                        rects.push(r);
                    }
                    continue;
                }
                self.cells[i] = k;
                self.draw_cell(surface, &t, &colors, row, col, ch, attr, blink_hidden, cur);
                let r = Rect {
                    x: col * cw,
                    y: row * chh,
                    w: cw,
                    h: chh,
                };
                run = Some(run.map_or(r, |p| p.union(r)));
            }
            rects.extend(run);
        }
        if !full {
            for r in rects {
                surface.mark(r);
            }
        } else {
            surface.mark(Rect {
                x: 0,
                y: 0,
                w: surface.width(),
                h: surface.height(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_cell(
        &self,
        surface: &mut Surface,
        t: &TextMode,
        colors: &[[u8; 3]],
        row: u32,
        col: u32,
        ch: u8,
        attr: u8,
        blink_hidden: bool,
        cursor: Option<Cursor>,
    ) {
        let bg = if t.blink { (attr >> 4) & 7 } else { attr >> 4 };
        let fg = if blink_hidden { bg } else { attr & 0x0f };
        let (fg, bg) = (colors[fg as usize], colors[bg as usize]);
        // Attribute bit 3 picks map A when set, map B when clear.
        let slot = if attr & 8 != 0 { 0 } else { 8192 };
        let graphics_char = t.line_graphics && (0xc0..=0xdf).contains(&ch);
        let (x0, y0) = (col * t.char_width, row * t.char_height);
        for line in 0..t.char_height {
            let bits = self.font[slot + ch as usize * 32 + (line & 31) as usize];
            let in_cursor = cursor.is_some_and(|c| (c.start as u32..=c.end as u32).contains(&line));
            for x in 0..t.char_width {
                let on = match x {
                    0..=7 => bits & (0x80 >> x) != 0,
                    _ => graphics_char && bits & 1 != 0,
                };
                let on = in_cursor || on;
                surface.put(x0 + x, y0 + line, if on { fg } else { bg });
            }
        }
    }

    /// Marks runs of redrawn lines as rectangles.
    fn mark_lines(surface: &mut Surface, lines: &[bool], full: bool) {
        let w = surface.width();
        if full {
            surface.mark(Rect {
                x: 0,
                y: 0,
                w,
                h: surface.height(),
            });
            return;
        }
        let mut y = 0;
        while y < lines.len() {
            if !lines[y] {
                y += 1;
                continue;
            }
            let start = y;
            while y < lines.len() && lines[y] {
                y += 1;
            }
            surface.mark(Rect {
                x: 0,
                y: start as u32,
                w,
                h: (y - start) as u32,
            });
        }
    }

    fn graphics(&mut self, surface: &mut Surface, vga: &Vga, dirty: &VgaDirty, g: GraphicsMode) {
        let full = self.enter(surface, Drawn::Graphics(g), g.width, g.height) | dirty.display;
        let vram = vga.vram();
        let plane = |off: u32, p: u32| vram[(off & 0xffff) as usize * 4 + p as usize];
        let colors: Vec<[u8; 3]> = match g.kind {
            GraphicsKind::Byte256 => (0..=255u8)
                .map(|i| vga.dac_rgb(vga.byte_color(i)))
                .collect(),
            _ => (0..16u8)
                .map(|i| vga.dac_rgb(vga.attribute_color(i)))
                .collect(),
        };
        let mut lines = vec![false; g.height as usize];
        for (y, redrawn) in lines.iter_mut().enumerate() {
            let y = y as u32;
            let base = g.start.wrapping_add(y * g.stride);
            let cga_addr = (y & 1) * 0x2000 + (y >> 1) * g.stride + g.start * 2;
            let (lo, hi) = match g.kind {
                GraphicsKind::Byte256 => {
                    let b = (base & 0xffff) as usize * 4;
                    (b, b + g.width as usize)
                }
                GraphicsKind::Planar16 => {
                    let b = (base & 0xffff) as usize * 4;
                    (b, b + g.width as usize / 2)
                }
                GraphicsKind::Cga4 => {
                    let b = ((cga_addr >> 1) & 0xffff) as usize * 4;
                    (b, b + g.width as usize / 2 + 4)
                }
            };
            if !full && !dirty.range(lo, hi) {
                continue;
            }
            *redrawn = true;
            for x in 0..g.width {
                let c = match g.kind {
                    GraphicsKind::Byte256 => plane(base + x / 4, x & 3) as usize,
                    GraphicsKind::Planar16 => {
                        let off = base + x / 8;
                        let bit = 7 - (x & 7);
                        (0..4).fold(0usize, |c, p| {
                            c | (((plane(off, p) >> bit) & 1) as usize) << p
                        })
                    }
                    GraphicsKind::Cga4 => {
                        let a = cga_addr + x / 4;
                        let b = plane(a >> 1, a & 1);
                        ((b >> (6 - 2 * (x & 3))) & 3) as usize
                    }
                };
                surface.put(x, y, colors[c]);
            }
        }
        Self::mark_lines(surface, &lines, full);
    }

    fn vbe(&mut self, surface: &mut Surface, vga: &Vga, dirty: &VgaDirty, m: VbeMode) {
        let full = self.enter(surface, Drawn::Vbe(m), m.width, m.height) | dirty.display;
        let vram = vga.vram();
        let palette: Vec<[u8; 3]> = if m.bpp == 8 {
            (0..=255u8)
                .map(|i| vga.dac_rgb(vga.byte_color(i)))
                .collect()
        } else {
            Vec::new()
        };
        let bytes = match m.bpp {
            8 => 1,
            15 | 16 => 2,
            24 => 3,
            _ => 4,
        };
        let five = |v: u16| ((v << 3) | (v >> 2)) as u8;
        let mut lines = vec![false; m.height as usize];
        for (y, redrawn) in lines.iter_mut().enumerate() {
            let start = m.offset as usize + y * m.stride as usize;
            let end = start + m.width as usize * bytes;
            if !full && !dirty.range(start, end) {
                continue;
            }
            let Some(src) = vram.get(start..end) else {
                continue;
            };
            *redrawn = true;
            for (x, p) in src.chunks_exact(bytes).enumerate() {
                let rgb = match m.bpp {
                    8 => palette[p[0] as usize],
                    15 => {
                        let v = u16::from_le_bytes([p[0], p[1]]);
                        [five((v >> 10) & 31), five((v >> 5) & 31), five(v & 31)]
                    }
                    16 => {
                        let v = u16::from_le_bytes([p[0], p[1]]);
                        let g = (v >> 5) & 63;
                        [five(v >> 11), ((g << 2) | (g >> 4)) as u8, five(v & 31)]
                    }
                    _ => [p[2], p[1], p[0]],
                };
                surface.put(x as u32, y as u32, rgb);
            }
        }
        Self::mark_lines(surface, &lines, full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_devices::pci::PciFunction;
    use vireo_devices::vga::dispi;
    use vireo_devices::vga::modes::{load_font, program, set_dac, MODE_03, MODE_12, MODE_13};

    const BLACK: [u8; 4] = [0, 0, 0, 255];
    const GREY: [u8; 4] = [170, 170, 170, 255];
    const BLUE: [u8; 4] = [0, 0, 170, 255];
    const WHITE: [u8; 4] = [255, 255, 255, 255];

    /// Mode 3 with a font whose glyph `n` line `l` is `n ^ l`, and the DAC
    /// entries for black, blue, grey and white.
    fn text_vga() -> Vga {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_03);
        let font: Vec<u8> = (0..256 * 16).map(|i| ((i / 16) ^ (i % 16)) as u8).collect();
        load_font(&mut v, &font, 16);
        set_dac(&mut v, 0, &[[0, 0, 0], [0, 0, 42]]);
        set_dac(&mut v, 7, &[[42, 42, 42]]);
        set_dac(&mut v, 0x3f, &[[63, 63, 63]]);
        v
    }

    fn put(v: &mut Vga, row: u64, col: u64, ch: u8, attr: u8) {
        let a = 0x18000 + (row * 80 + col) * 2;
        v.mem_write(a, ch);
        v.mem_write(a + 1, attr);
    }

    fn set_cursor(v: &mut Vga, pos: u16) {
        for (r, b) in [(0x0e, (pos >> 8) as u8), (0x0f, pos as u8)] {
            v.port_write(0x3d4, r);
            v.port_write(0x3d5, b);
        }
    }

    /// The expected colour of dot `x` of line `line` of glyph `ch`.
    fn dot(ch: u8, line: u32, x: u32, fg: [u8; 4], bg: [u8; 4]) -> [u8; 4] {
        let bits = ch ^ line as u8;
        let on = if x < 8 {
            bits & (0x80 >> x) != 0
        } else {
            (0xc0..=0xdf).contains(&ch) && bits & 1 != 0
        };
        if on {
            fg
        } else {
            bg
        }
    }

    #[test]
    fn text_mode_glyphs_colours_cursor_and_cell_updates() {
        let mut v = text_vga();
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        put(&mut v, 0, 0, b'A', 0x17); // grey on blue
        put(&mut v, 0, 1, 0xc1, 0x17); // line-graphics character
        for c in 2..80 {
            put(&mut v, 0, c, b' ', 0x07);
        }
        set_cursor(&mut v, 80); // row 1, column 0
        r.render(&mut s, &mut v, 0);
        assert_eq!((s.width(), s.height()), (720, 400));
        for line in 0..16 {
            for x in 0..9 {
                assert_eq!(s.pixel(x, line).unwrap(), dot(b'A', line, x, GREY, BLUE));
                assert_eq!(
                    s.pixel(9 + x, line).unwrap(),
                    dot(0xc1, line, x, GREY, BLUE)
                );
            }
        }
        // 'A' ^ 0 = 0x41 has bit 0 set, but only 0xc0-0xdf extend to the 9th dot.
        assert_eq!(s.pixel(8, 0).unwrap(), BLUE);
        assert_eq!(s.pixel(17, 0).unwrap(), GREY);
        // Cursor on lines 13-14 of row 1's first cell, in its foreground
        // (the cell holds 0 with attribute 0: the cursor colour is colour 0
        // there, so give it a visible attribute first).
        put(&mut v, 1, 0, b' ', 0x70);
        r.render(&mut s, &mut v, 1);
        assert_eq!(s.pixel(3, 16 + 13).unwrap(), BLACK); // fg 0 = black on grey
        assert_eq!(s.pixel(3, 16 + 12).unwrap(), GREY);
        put(&mut v, 1, 0, b' ', 0x07);
        r.render(&mut s, &mut v, 2);
        assert_eq!(s.pixel(3, 16 + 13).unwrap(), GREY);
        assert_eq!(s.pixel(3, 16 + 12).unwrap(), BLACK);
        // Half a cursor period later (8 frames) it is off: only its cell changes.
        let seq = s.seq();
        r.render(&mut s, &mut v, 140);
        assert_eq!(s.pixel(3, 16 + 13).unwrap(), BLACK);
        assert_eq!(
            s.changes_since(seq).unwrap(),
            vec![Rect {
                x: 0,
                y: 16,
                w: 9,
                h: 16
            }]
        );
        // No change, no update.
        let seq = s.seq();
        r.render(&mut s, &mut v, 141);
        assert_eq!(s.seq(), seq);
        assert_eq!(s.changes_since(seq).unwrap(), vec![]);
        // One character: one cell-sized rectangle.
        put(&mut v, 2, 3, b'Z', 0x0f);
        r.render(&mut s, &mut v, 142);
        assert_eq!(
            s.changes_since(seq).unwrap(),
            vec![Rect {
                x: 27,
                y: 32,
                w: 9,
                h: 16
            }]
        );
        assert_eq!(s.pixel(27 + 1, 32).unwrap(), dot(b'Z', 0, 1, WHITE, BLACK));
        assert!(v.text_screen().unwrap()[2].starts_with("   Z"));
        // A palette change redraws everything.
        let seq = s.seq();
        set_dac(&mut v, 1, &[[0, 42, 0]]);
        r.render(&mut s, &mut v, 143);
        assert_eq!(
            s.changes_since(seq).unwrap(),
            vec![Rect {
                x: 0,
                y: 0,
                w: 720,
                h: 400
            }]
        );
        assert_eq!(s.pixel(0, 0).unwrap(), [0, 170, 0, 255]);
    }

    #[test]
    fn blinking_characters_and_font_changes() {
        let mut v = text_vga();
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        put(&mut v, 3, 0, 0xff, 0x87); // all dots on in line 0, blinking
        r.render(&mut s, &mut v, 0);
        assert_eq!(s.pixel(0, 48).unwrap(), GREY);
        r.render(&mut s, &mut v, 300); // frame 18: blink phase off
        assert_eq!(s.pixel(0, 48).unwrap(), BLACK);
        r.render(&mut s, &mut v, 600); // frame 36: on again
        assert_eq!(s.pixel(0, 48).unwrap(), GREY);
        // Loading another font redraws with it.
        let font = vec![0u8; 256 * 16];
        load_font(&mut v, &font, 16);
        r.render(&mut s, &mut v, 601);
        assert_eq!(s.pixel(0, 48).unwrap(), BLACK);
    }

    #[test]
    fn mode_13h_pixels_and_line_updates() {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_13);
        set_dac(&mut v, 5, &[[63, 0, 0]]);
        v.mem_write(2 * 320 + 10, 5);
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        r.render(&mut s, &mut v, 0);
        assert_eq!((s.width(), s.height()), (320, 200));
        assert_eq!(s.pixel(10, 2).unwrap(), [255, 0, 0, 255]);
        assert_eq!(s.pixel(11, 2).unwrap(), BLACK);
        let seq = s.seq();
        v.mem_write(100 * 320 + 7, 5);
        r.render(&mut s, &mut v, 1);
        let ch = s.changes_since(seq).unwrap();
        // Only the lines sharing the written 4 KiB page.
        assert!(ch
            .iter()
            .all(|c| c.y <= 100 && c.y + c.h > 100 && c.h <= 14));
        assert_eq!(s.pixel(7, 100).unwrap(), [255, 0, 0, 255]);
    }

    #[test]
    fn mode_12h_planar_pixels() {
        let mut v = Vga::new(Vec::new());
        program(&mut v, &MODE_12);
        set_dac(&mut v, 0x3a, &[[0, 63, 0]]);
        set_dac(&mut v, 0x14, &[[42, 21, 0]]);
        // Write mode 2: colour 10 in the left nibble of byte 0 of line 1.
        v.port_write(0x3ce, 5);
        v.port_write(0x3cf, 2);
        v.port_write(0x3ce, 8);
        v.port_write(0x3cf, 0xf0);
        v.mem_read(80);
        v.mem_write(80, 0x0a);
        v.port_write(0x3cf, 0x0f);
        v.mem_read(80);
        v.mem_write(80, 0x06);
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        r.render(&mut s, &mut v, 0);
        assert_eq!((s.width(), s.height()), (640, 480));
        assert_eq!(s.pixel(0, 1).unwrap(), [0, 255, 0, 255]); // 10 → AR 0x3a
        assert_eq!(s.pixel(4, 1).unwrap(), [170, 85, 0, 255]); // 6 → AR 0x14
        assert_eq!(s.pixel(8, 1).unwrap(), BLACK);
        assert_eq!(s.pixel(0, 0).unwrap(), BLACK);
    }

    fn vbe_mode(v: &mut Vga, w: u16, h: u16, bpp: u16) {
        v.dispi_write(dispi::ENABLE, 0);
        v.dispi_write(dispi::XRES, w);
        v.dispi_write(dispi::YRES, h);
        v.dispi_write(dispi::BPP, bpp);
        v.dispi_write(dispi::ENABLE, dispi::ENABLED | dispi::LFB_ENABLED);
    }

    #[test]
    fn vbe_modes_through_the_lfb() {
        let mut v = Vga::new(Vec::new());
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        vbe_mode(&mut v, 640, 480, 32);
        v.region_write(0, (10 * 640 + 3) * 4, &[0x11, 0x22, 0x33, 0]);
        r.render(&mut s, &mut v, 0);
        assert_eq!((s.width(), s.height()), (640, 480));
        assert_eq!(s.pixel(3, 10).unwrap(), [0x33, 0x22, 0x11, 255]);
        // Only the written line is reported next time.
        let seq = s.seq();
        v.region_write(0, (300 * 640 + 5) * 4, &[0xff, 0, 0, 0]);
        r.render(&mut s, &mut v, 1);
        let ch = s.changes_since(seq).unwrap();
        assert!(ch
            .iter()
            .all(|c| c.w == 640 && c.y <= 300 && c.y + c.h > 300 && c.h <= 2));
        assert_eq!(s.pixel(5, 300).unwrap(), [0, 0, 0xff, 255]);
        // 16 bpp: a mode change resizes and everything is new.
        let seq = s.seq();
        vbe_mode(&mut v, 800, 600, 16);
        v.region_write(0, (800 + 2) * 2, &0xf800u16.to_le_bytes());
        v.region_write(0, (800 + 3) * 2, &0x07e0u16.to_le_bytes());
        r.render(&mut s, &mut v, 2);
        assert_eq!(s.changes_since(seq), None);
        assert_eq!((s.width(), s.height()), (800, 600));
        assert_eq!(s.pixel(2, 1).unwrap(), [255, 0, 0, 255]);
        assert_eq!(s.pixel(3, 1).unwrap(), [0, 255, 0, 255]);
        // 15 bpp and 24 bpp.
        vbe_mode(&mut v, 320, 200, 15);
        v.region_write(0, 0, &0x001fu16.to_le_bytes());
        r.render(&mut s, &mut v, 3);
        assert_eq!(s.pixel(0, 0).unwrap(), [0, 0, 255, 255]);
        vbe_mode(&mut v, 320, 200, 24);
        v.region_write(0, 3, &[1, 2, 3]);
        r.render(&mut s, &mut v, 4);
        assert_eq!(s.pixel(1, 0).unwrap(), [3, 2, 1, 255]);
        // 8 bpp through the DAC.
        vbe_mode(&mut v, 1024, 768, 8);
        set_dac(&mut v, 9, &[[63, 63, 0]]);
        v.region_write(0, 1024 + 4, &[9]);
        r.render(&mut s, &mut v, 5);
        assert_eq!((s.width(), s.height()), (1024, 768));
        assert_eq!(s.pixel(4, 1).unwrap(), [255, 255, 0, 255]);
        assert_eq!(s.pixel(5, 1).unwrap(), BLACK);
        // Back to VGA with no mode programmed: blank.
        v.dispi_write(dispi::ENABLE, 0);
        r.render(&mut s, &mut v, 6);
        assert!(s.pixels().chunks(4).all(|p| p == BLACK));
    }

    #[test]
    fn change_history_is_bounded() {
        let mut s = Surface::new(16, 16);
        let start = s.seq();
        assert_eq!(s.changes_since(start - 1), None);
        for i in 0..HISTORY as u32 + 10 {
            s.mark(Rect {
                x: i % 16,
                y: 0,
                w: 1,
                h: 1,
            });
            s.commit();
        }
        assert_eq!(s.changes_since(start), None);
        let recent = s.seq() - 3;
        assert_eq!(s.changes_since(recent).unwrap().len(), 3);
        // Many rectangles in one update become their bounding box.
        let seq = s.seq();
        for i in 0..100 {
            s.mark(Rect {
                x: i % 16,
                y: i / 16,
                w: 1,
                h: 1,
            });
        }
        s.commit();
        assert_eq!(
            s.changes_since(seq).unwrap(),
            vec![Rect {
                x: 0,
                y: 0,
                w: 16,
                h: 7
            }]
        );
    }

    #[test]
    fn png_and_ppm_export() {
        let mut s = Surface::new(3, 2);
        s.put(1, 0, [10, 20, 30]);
        s.put(2, 1, [255, 0, 128]);
        let dir = std::env::temp_dir().join(format!("vireo-display-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ppm = dir.join("a.ppm");
        s.write_ppm(&ppm).unwrap();
        let data = std::fs::read(&ppm).unwrap();
        let header = b"P6\n3 2\n255\n";
        assert_eq!(&data[..header.len()], header);
        assert_eq!(
            &data[header.len()..],
            &[0, 0, 0, 10, 20, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 128]
        );
        let png_path = dir.join("a.png");
        s.write_png(&png_path).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&png_path).unwrap(),
        ));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], s.pixels());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hostile_registers_render_without_panicking() {
        let mut v = Vga::new(Vec::new());
        let mut s = Surface::new(0, 0);
        let mut r = Renderer::new();
        let mut x = 0x9e37_79b9u32;
        for i in 0..3000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = 0x3b0 + (x % 0x30) as u16;
            v.port_write(port, (x >> 8) as u8);
            if x & 0x100 != 0 {
                v.mem_write((x >> 12) as u64 % 0x20000, x as u8);
            }
            if x & 0x3000 == 0 {
                v.dispi_write((x >> 16) as u16 % 12, (x >> 4) as u16);
            }
            if i % 50 == 0 {
                // Make sure the attribute controller shows a picture sometimes.
                v.port_read(0x3da);
                v.port_write(0x3c0, 0x20);
                r.render(&mut s, &mut v, i * 7);
            }
        }
    }
}
