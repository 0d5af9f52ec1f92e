//! Reads text off a graphical screen: every 8×16 cell of an RGBA frame is
//! split into its most common colour (background) and the rest
//! (foreground), and the resulting bitmap is looked up among a font's
//! glyphs. This is how the tests read what a framebuffer console (Linux's
//! fbcon, the Debian installer's bterm) drew, without the serial port.

use std::collections::HashMap;
use std::path::Path;

/// 8×16 glyph bitmaps (one byte a row, bit 7 leftmost) to characters.
pub struct Font {
    glyphs: HashMap<[u8; 16], char>,
}

impl Font {
    /// The printable ASCII glyphs of a GNU Unifont `.hex` file (lines
    /// `XXXX:` + 32 hex digits for 8-pixel-wide glyphs), the font family
    /// the Debian installer's bterm draws with.
    pub fn from_unifont_hex(path: &Path) -> std::io::Result<Font> {
        let text = std::fs::read_to_string(path)?;
        let mut glyphs = HashMap::new();
        for line in text.lines() {
            let Some((cp, hex)) = line.split_once(':') else {
                continue;
            };
            let Ok(cp) = u32::from_str_radix(cp, 16) else {
                continue;
            };
            if !(0x20..0x7f).contains(&cp) || hex.len() != 32 {
                continue;
            }
            let mut g = [0u8; 16];
            for (i, b) in g.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            if let Some(c) = char::from_u32(cp) {
                glyphs.entry(g).or_insert(c);
            }
        }
        Ok(Font { glyphs })
    }

    /// The printable ASCII glyphs of the 8×16 font inside a VGA BIOS image
    /// (the font a text-mode screen is drawn with once the VGA BIOS loaded
    /// it), found by the IBM VGA glyph of `A`.
    pub fn from_vga_rom(path: &Path) -> std::io::Result<Font> {
        const A: [u8; 16] = [
            0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00,
            0x00, 0x00,
        ];
        let rom = std::fs::read(path)?;
        let at = rom
            .windows(16)
            .position(|w| w == A)
            .filter(|&p| p >= 0x41 * 16 && p - 0x41 * 16 + 256 * 16 <= rom.len())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: no 8x16 VGA font found", path.display()),
                )
            })?;
        let base = at - 0x41 * 16;
        let mut glyphs = HashMap::new();
        for c in 0x20u8..0x7f {
            let mut g = [0u8; 16];
            g.copy_from_slice(&rom[base + c as usize * 16..base + c as usize * 16 + 16]);
            glyphs.entry(g).or_insert(c as char);
        }
        Ok(Font { glyphs })
    }

    /// The text of an RGBA frame (`width`×`height`, 4 bytes a pixel) read
    /// cell by cell on the 8×16 grid from the top-left corner; cells
    /// matching no glyph read as `?`, trailing blanks are trimmed.
    pub fn read(&self, rgba: &[u8], width: usize, height: usize) -> Vec<String> {
        self.read_cells(rgba, width, height, 8)
    }

    /// Like [`Font::read`] with cells `cell_w` pixels wide (9 for VGA text
    /// modes), of which the leftmost 8 are compared.
    pub fn read_cells(
        &self,
        rgba: &[u8],
        width: usize,
        height: usize,
        cell_w: usize,
    ) -> Vec<String> {
        let cell_w = cell_w.max(8);
        let px = |x: usize, y: usize| -> u32 {
            let i = (y * width + x) * 4;
            rgba.get(i..i + 3)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                .unwrap_or(0)
        };
        let mut lines = Vec::new();
        for row in 0..height / 16 {
            let mut s = String::new();
            for col in 0..width / cell_w {
                let mut counts: HashMap<u32, usize> = HashMap::new();
                for y in 0..16 {
                    for x in 0..8 {
                        *counts
                            .entry(px(col * cell_w + x, row * 16 + y))
                            .or_default() += 1;
                    }
                }
                let bg = counts
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(c, _)| *c)
                    .unwrap_or(0);
                let mut g = [0u8; 16];
                for (y, b) in g.iter_mut().enumerate() {
                    for x in 0..8 {
                        if px(col * cell_w + x, row * 16 + y) != bg {
                            *b |= 0x80 >> x;
                        }
                    }
                }
                s.push(*self.glyphs.get(&g).unwrap_or(&'?'));
            }
            lines.push(s.trim_end().to_string());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_draws() {
        let dir = std::env::temp_dir().join(format!("vireo-font-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let hex = dir.join("f.hex");
        // 'A' and 'B' in a made-up 8x16 font, and a wide glyph (ignored).
        std::fs::write(
            &hex,
            "0041:00000000183C66667E66666666000000\n\
             0042:000000007C66667C6666667C00000000\n\
             4E00:00000000000000000000000000000000000000000000000000000000000000FF\n",
        )
        .expect("write");
        let font = Font::from_unifont_hex(&hex).expect("font");
        let (w, h) = (24, 16);
        let mut rgba = vec![0u8; w * h * 4];
        // The third cell: a pattern no glyph has.
        rgba[(2 * 8 + 3) * 4] = 9;
        for (i, hexg) in [
            "00000000183C66667E66666666000000",
            "000000007C66667C6666667C00000000",
        ]
        .iter()
        .enumerate()
        {
            for y in 0..16 {
                let row = u8::from_str_radix(&hexg[2 * y..2 * y + 2], 16).unwrap();
                for x in 0..8 {
                    let p = ((y * w) + i * 8 + x) * 4;
                    let on = row & (0x80 >> x) != 0;
                    rgba[p..p + 4].copy_from_slice(if on {
                        &[200, 0, 0, 255]
                    } else {
                        &[0, 0, 170, 255]
                    });
                }
            }
        }
        assert_eq!(font.read(&rgba, w, h), vec!["AB?".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
