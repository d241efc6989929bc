//! Plans one process hands to the next, so that hooking needs no decoder.
//!
//! Decoding a prologue is cheap, but iced-x86 builds its decoder and encoder tables on first
//! use, and that costs most of a millisecond: in a program that forks and execs a child per
//! task, every child would pay it again for the same libc. A [`Recipe`] is a [`Plan`] in a form
//! that needs no decoder to apply: the hash of the bytes it was made from, and for each stolen
//! instruction its length and what in it depends on its address (a RIP-relative displacement, a
//! relative branch). A process that finds the same bytes at its function (same hash, same
//! length) builds the trampoline from the recipe by copying and adjusting displacements; any
//! other bytes fall back to decoding. Recipes travel as text ([`Recipe::parse_list`],
//! `Display`), for example in an environment variable.
//!
//! The hash covers the whole scanned window, not only the stolen bytes, because the plan's
//! checks (no branch from the window back into the stolen bytes) depend on all of it.
//!
//! [`Plan`]: crate::Plan

use core::fmt;

use crate::decode::SCAN_WINDOW;
use crate::error::HookError;
use crate::relocate::{near_window_of, ENDBR64, PATCH_LEN};

/// How one stolen instruction is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Position-independent: copied as is.
    Copy { len: u8 },
    /// A RIP-relative memory operand whose 32-bit displacement starts `disp` bytes in.
    RipRelative { len: u8, disp: u8 },
    /// `jcc rel8` with condition `cc` (opcode `0x70 | cc`): becomes `jcc rel32`.
    ShortJcc { cc: u8 },
    /// `jmp rel8`: becomes `jmp rel32`.
    ShortJmp,
    /// A relative branch ending in its 32-bit displacement (`jmp`, `call`, near `jcc`).
    NearBranch { len: u8 },
}

impl Piece {
    fn len(self) -> usize {
        match self {
            Piece::Copy { len } | Piece::RipRelative { len, .. } | Piece::NearBranch { len } => len.into(),
            Piece::ShortJcc { .. } | Piece::ShortJmp => 2,
        }
    }

    /// Whether `bytes` (the instruction) can be what this piece says it is.
    fn fits(self, bytes: &[u8]) -> bool {
        match self {
            Piece::Copy { len } => len > 0,
            Piece::RipRelative { len, disp } => disp as usize + 4 <= len as usize,
            Piece::ShortJcc { cc } => cc < 16 && bytes.first() == Some(&(0x70 | cc)),
            Piece::ShortJmp => bytes.first() == Some(&0xEB),
            Piece::NearBranch { len } => len >= 5,
        }
    }
}

/// A plan in portable form; see the module docs. Made by [`Plan::recipe`](crate::Plan::recipe)
/// or parsed from text; used by [`Hook::with_recipes`](crate::Hook::with_recipes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    hash: u64,
    window: u16,
    patch_offset: u8,
    falls_through: bool,
    pieces: Vec<Piece>,
}

impl Recipe {
    pub(crate) fn new(window: &[u8], patch_offset: usize, falls_through: bool, pieces: Vec<Piece>) -> Option<Recipe> {
        Some(Recipe {
            hash: hash(window),
            window: u16::try_from(window.len()).ok()?,
            patch_offset: u8::try_from(patch_offset).ok()?,
            falls_through,
            pieces,
        })
    }

    /// Parses recipes separated by `,`, skipping any that are malformed (they would only
    /// fail to match).
    pub fn parse_list(text: &str) -> Vec<Recipe> {
        text.split(',').filter_map(Recipe::parse).collect()
    }

    fn parse(text: &str) -> Option<Recipe> {
        let mut fields = text.split(':');
        let hash = u64::from_str_radix(fields.next()?, 16).ok()?;
        let window = fields.next()?.parse().ok()?;
        let patch_offset = fields.next()?.parse().ok()?;
        let falls_through = match fields.next()? {
            "f" => true,
            "e" => false,
            _ => return None,
        };
        let pieces = fields.next()?.split('-').map(parse_piece).collect::<Option<Vec<_>>>()?;
        if fields.next().is_some() || pieces.is_empty() {
            return None;
        }
        Some(Recipe { hash, window, patch_offset, falls_through, pieces })
    }

    /// The trampoline for the function at `ip` whose first bytes are `code`, placed at `at`, as
    /// [`Plan::relocate`](crate::Plan::relocate) would build it; `None` when this recipe was not
    /// made from these bytes.
    pub fn relocate(&self, code: &[u8], ip: u64, at: u64) -> Option<Result<Vec<u8>, HookError>> {
        self.apply(code, ip).map(|copied| copied.relocate(at))
    }

    /// The plan for the function at `ip` whose first bytes are `code` (read the way
    /// [`plan`](crate::plan) is given them), if they are the bytes this recipe was made from.
    pub(crate) fn apply(&self, code: &[u8], ip: u64) -> Option<Copied> {
        if code.len() != usize::from(self.window) || hash(code) != self.hash {
            return None;
        }
        let patch_offset = usize::from(self.patch_offset);
        if patch_offset != 0 && (patch_offset != ENDBR64.len() || !code.starts_with(&ENDBR64)) {
            return None;
        }
        // The recipe came from outside (an environment variable): its pieces must describe
        // whole instructions inside the window before anything is built from them.
        let mut at = patch_offset;
        for piece in &self.pieces {
            let bytes = code.get(at..at + piece.len())?;
            if !piece.fits(bytes) {
                return None;
            }
            at += piece.len();
        }
        let stolen = &code[patch_offset..at];
        if stolen.len() < PATCH_LEN {
            return None;
        }
        Some(Copied {
            ip,
            patch_offset,
            stolen: stolen.to_vec(),
            pieces: self.pieces.clone(),
            falls_through: self.falls_through,
        })
    }
}

impl fmt::Display for Recipe {
    /// `HASH:WINDOW:PATCH_OFFSET:f|e:PIECE-PIECE-…`, pieces being `c7` (copy 7 bytes), `r7.2`
    /// (7 bytes, RIP-relative displacement at 2), `s5` (short jcc, condition 5), `b` (short
    /// jmp), `n5` (5-byte near branch).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = if self.falls_through { "f" } else { "e" };
        write!(f, "{:016x}:{}:{}:{ending}:", self.hash, self.window, self.patch_offset)?;
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            match *piece {
                Piece::Copy { len } => write!(f, "c{len}")?,
                Piece::RipRelative { len, disp } => write!(f, "r{len}.{disp}")?,
                Piece::ShortJcc { cc } => write!(f, "s{cc}")?,
                Piece::ShortJmp => f.write_str("b")?,
                Piece::NearBranch { len } => write!(f, "n{len}")?,
            }
        }
        Ok(())
    }
}

fn parse_piece(text: &str) -> Option<Piece> {
    let (kind, rest) = text.split_at_checked(1)?;
    let piece = match kind {
        "c" => Piece::Copy { len: rest.parse().ok()? },
        "r" => {
            let (len, disp) = rest.split_once('.')?;
            Piece::RipRelative { len: len.parse().ok()?, disp: disp.parse().ok()? }
        }
        "s" => Piece::ShortJcc { cc: rest.parse().ok()? },
        "b" if rest.is_empty() => Piece::ShortJmp,
        "n" => Piece::NearBranch { len: rest.parse().ok()? },
        _ => return None,
    };
    // No x86 instruction is longer than 15 bytes.
    (piece.len() <= 15).then_some(piece)
}

/// FNV-1a over the window: recipes are matched against bytes the process reads itself, so
/// this only has to tell different prologues apart, not resist forgery.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A plan built from a [`Recipe`] and the live bytes: what [`Hook`](crate::Hook) needs, with
/// no decoded instructions.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    ip: u64,
    patch_offset: usize,
    stolen: Vec<u8>,
    pieces: Vec<Piece>,
    falls_through: bool,
}

impl Copied {
    pub(crate) fn patch_address(&self) -> u64 {
        self.ip.wrapping_add(self.patch_offset as u64)
    }

    pub(crate) fn stolen_bytes(&self) -> &[u8] {
        &self.stolen
    }

    pub(crate) fn stolen_instructions(&self) -> usize {
        self.pieces.len()
    }

    fn resume_address(&self) -> u64 {
        self.patch_address().wrapping_add(self.stolen.len() as u64)
    }

    /// Each piece with its original address, its bytes, and the address it refers to.
    fn walk(&self) -> impl Iterator<Item = (Piece, &[u8], Option<u64>)> {
        let mut offset = 0;
        self.pieces.iter().map(move |&piece| {
            let bytes = &self.stolen[offset..offset + piece.len()];
            let end = self.patch_address().wrapping_add((offset + piece.len()) as u64);
            offset += piece.len();
            let rel32 =
                |at: usize| i64::from(i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]));
            let target = match piece {
                Piece::Copy { .. } => None,
                Piece::RipRelative { disp, .. } => Some(rel32(disp.into())),
                Piece::ShortJcc { .. } | Piece::ShortJmp => Some(i64::from(bytes[1] as i8)),
                Piece::NearBranch { len } => Some(rel32(usize::from(len) - 4)),
            };
            (piece, bytes, target.map(|rel| end.wrapping_add(rel as u64)))
        })
    }

    /// As [`Plan::trampoline_window`](crate::Plan::trampoline_window): within rel32 reach of
    /// the patch site and of everything the stolen code refers to.
    pub(crate) fn trampoline_window(&self) -> Option<(u64, u64)> {
        let (mut lowest, mut highest) = (self.patch_address(), self.patch_address());
        for target in self.walk().filter_map(|(_, _, target)| target) {
            lowest = lowest.min(target);
            highest = highest.max(target);
        }
        near_window_of(lowest, highest)
    }

    /// As [`Plan::relocate`](crate::Plan::relocate), by copying: displacements are adjusted
    /// to the new address and short branches widened to rel32.
    pub(crate) fn relocate(&self, at: u64) -> Result<Vec<u8>, HookError> {
        let too_far = || HookError::Relocate { addr: self.ip, reason: "a target is out of rel32 reach".into() };
        let mut code = Vec::with_capacity(SCAN_WINDOW);
        if self.patch_offset == ENDBR64.len() {
            code.extend_from_slice(&ENDBR64);
        }
        // The rel32 to `target` for an instruction of `len` bytes appended now.
        let rel32_from = |code: &Vec<u8>, len: usize, target: u64| {
            let end = at.wrapping_add((code.len() + len) as u64);
            i32::try_from(target.wrapping_sub(end) as i64).map(i32::to_le_bytes).map_err(|_| too_far())
        };
        for (piece, bytes, target) in self.walk() {
            match (piece, target) {
                (Piece::RipRelative { disp, .. }, Some(target)) => {
                    let rel = rel32_from(&code, bytes.len(), target)?;
                    let disp = usize::from(disp);
                    code.extend_from_slice(&bytes[..disp]);
                    code.extend_from_slice(&rel);
                    code.extend_from_slice(&bytes[disp + 4..]);
                }
                (Piece::ShortJcc { cc }, Some(target)) => {
                    let rel = rel32_from(&code, 6, target)?;
                    code.extend_from_slice(&[0x0F, 0x80 | cc]);
                    code.extend_from_slice(&rel);
                }
                (Piece::ShortJmp, Some(target)) => {
                    let rel = rel32_from(&code, 5, target)?;
                    code.push(0xE9);
                    code.extend_from_slice(&rel);
                }
                (Piece::NearBranch { .. }, Some(target)) => {
                    let rel = rel32_from(&code, bytes.len(), target)?;
                    code.extend_from_slice(&bytes[..bytes.len() - 4]);
                    code.extend_from_slice(&rel);
                }
                _ => code.extend_from_slice(bytes),
            }
        }
        if self.falls_through {
            let rel = rel32_from(&code, 5, self.resume_address())?;
            code.push(0xE9);
            code.extend_from_slice(&rel);
        }
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cmp byte [rip+0x1000], 0` (7 bytes), `je +0x10` (2), `mov eax, 0x2a` (5): the start of
    /// glibc's `connect`.
    const CONNECT: [u8; 14] = [0x80, 0x3D, 0x00, 0x10, 0x00, 0x00, 0x00, 0x74, 0x10, 0xB8, 0x2A, 0, 0, 0];

    fn recipe(pieces: Vec<Piece>) -> Recipe {
        Recipe::new(&CONNECT, 0, true, pieces).expect("recipe")
    }

    #[test]
    fn text_round_trip() {
        let r = Recipe::new(
            &CONNECT,
            4,
            false,
            vec![
                Piece::Copy { len: 3 },
                Piece::RipRelative { len: 7, disp: 2 },
                Piece::ShortJcc { cc: 4 },
                Piece::ShortJmp,
                Piece::NearBranch { len: 6 },
            ],
        )
        .expect("recipe");
        let text = format!("{r},{r}");
        assert_eq!(Recipe::parse_list(&text), vec![r.clone(), r]);
        for bad in ["", "zz:14:0:f:c5", "0:14:0:x:c5", "0:14:0:f:", "0:14:0:f:q5", "0:14:0:f:c99", "0:14:0:f:c5:extra"]
        {
            assert!(Recipe::parse_list(bad).is_empty(), "{bad:?} parsed");
        }
    }

    #[test]
    fn applies_only_to_the_same_bytes() {
        let r = recipe(vec![Piece::RipRelative { len: 7, disp: 2 }]);
        assert!(r.apply(&CONNECT, 0x1000).is_some());
        let mut other = CONNECT;
        other[12] = 1;
        assert!(r.apply(&other, 0x1000).is_none(), "a byte differs");
        assert!(r.apply(&CONNECT[..13], 0x1000).is_none(), "a shorter window");
    }

    #[test]
    fn refuses_pieces_that_do_not_fit_the_bytes() {
        // A short jcc where the bytes hold a `cmp`; fewer than 5 stolen bytes; past the window.
        assert!(recipe(vec![Piece::ShortJcc { cc: 4 }, Piece::Copy { len: 5 }]).apply(&CONNECT, 0).is_none());
        assert!(recipe(vec![Piece::Copy { len: 4 }]).apply(&CONNECT, 0).is_none());
        assert!(recipe(vec![Piece::Copy { len: 15 }]).apply(&CONNECT, 0).is_none());
        // An endbr64 offset without an endbr64.
        assert!(Recipe::new(&CONNECT, 4, true, vec![Piece::Copy { len: 5 }])
            .expect("recipe")
            .apply(&CONNECT, 0)
            .is_none());
    }

    #[test]
    fn relocates_displacements_and_widens_short_branches() {
        let ip = 0x7f00_0000_1000u64;
        let copied = recipe(vec![Piece::RipRelative { len: 7, disp: 2 }, Piece::ShortJcc { cc: 4 }])
            .apply(&CONNECT, ip)
            .expect("applies");
        let at = ip + 0x10_0000;
        let code = copied.relocate(at).expect("relocate");
        // cmp: the operand was at ip + 7 + 0x1000.
        assert_eq!(code[..2], CONNECT[..2]);
        let disp = i32::from_le_bytes(code[2..6].try_into().expect("4 bytes"));
        assert_eq!(at.wrapping_add(7).wrapping_add(disp as i64 as u64), ip + 7 + 0x1000);
        assert_eq!(code[6], 0);
        // je rel32 to ip + 9 + 0x10.
        assert_eq!(code[7..9], [0x0F, 0x84]);
        let rel = i32::from_le_bytes(code[9..13].try_into().expect("4 bytes"));
        assert_eq!(at.wrapping_add(13).wrapping_add(rel as i64 as u64), ip + 9 + 0x10);
        // jmp back to ip + 9.
        assert_eq!(code[13], 0xE9);
        let rel = i32::from_le_bytes(code[14..18].try_into().expect("4 bytes"));
        assert_eq!(at.wrapping_add(18).wrapping_add(rel as i64 as u64), ip + 9);
        assert_eq!(code.len(), 18);
        // Out of reach: refused, not wrapped.
        assert!(copied.relocate(ip + (3 << 30)).is_err());
    }
}
