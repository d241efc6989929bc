//! Step 2 of the pipeline: decide which whole instructions the patch steals and re-encode them,
//! with iced-x86's BlockEncoder, at the trampoline's address.
//!
//! Everything here is pure: it reads byte slices and returns bytes, so it is tested on byte
//! tables without executing anything.

use iced_x86::{BlockEncoder, BlockEncoderOptions, Code, ConstantOffsets, Instruction, InstructionBlock};

use crate::decode::{self, branch_target, ends_flow, is_endbr64};
use crate::error::HookError;
use crate::recipe::{Piece, Recipe};

/// Length of the patch written at the function: `jmp rel32` (`E9` + 4 bytes).
pub const PATCH_LEN: usize = 5;

/// `endbr64`, the first instruction of a trampoline whose function started with one, so an
/// indirect call to the trampoline is a valid landing under CET's indirect branch tracking.
pub const ENDBR64: [u8; 4] = [0xF3, 0x0F, 0x1E, 0xFA];

/// Reach of a `rel32` displacement.
const REL32_REACH: u64 = 1 << 31;

/// Slack kept inside the ±2 GiB windows: a trampoline is not a single address but up to a page
/// of code, and its rel32 displacements count from the end of each instruction.
const WINDOW_SLACK: u64 = 1 << 20;

/// Lowest address a trampoline is placed at (below it: `vm.mmap_min_addr` and the null page).
pub(crate) const MIN_USER_ADDR: u64 = 0x10_0000;
/// One past the highest user-space address on x86-64 with 4-level paging.
pub(crate) const MAX_USER_ADDR: u64 = 0x7fff_ffff_f000;

/// What hooking a function takes, decided from its first bytes: where the patch goes, which
/// instructions it steals, and where the trampoline must lie. Made by [`plan`].
#[derive(Debug, Clone)]
pub struct Plan {
    ip: u64,
    patch_offset: usize,
    stolen: Vec<Instruction>,
    stolen_offsets: Vec<ConstantOffsets>,
    stolen_bytes: Vec<u8>,
    falls_through: bool,
}

/// Decides how to hook the function whose first bytes are `code`, loaded at address `ip`.
///
/// `code` should hold the function's first [`SCAN_WINDOW`](crate::SCAN_WINDOW) bytes when
/// that many are readable: the stolen instructions must lie inside it, and every instruction in
/// it is checked for branches back into the stolen bytes. A leading `endbr64` is kept in place
/// (the patch goes right after it), so indirect calls to the function still land on it.
///
/// Refuses, with the reason, a function that ends before 5 bytes ([`HookError::TooShort`]), one
/// with a branch into the stolen bytes ([`HookError::BranchIntoPatch`]) and bytes that are not
/// code ([`HookError::Undecodable`]). Never panics, whatever the bytes.
pub fn plan(code: &[u8], ip: u64) -> Result<Plan, HookError> {
    let decoded = decode::decode(code, ip);
    let instructions = &decoded.instructions;

    let mut index = 0;
    let mut patch_offset = 0;
    if instructions.first().is_some_and(is_endbr64) {
        patch_offset = ENDBR64.len();
        index = 1;
    }
    let patch_at = ip.wrapping_add(patch_offset as u64);

    // Steal whole instructions until the patch is covered.
    let first_stolen = index;
    let mut covered = 0usize;
    let mut falls_through = true;
    while covered < PATCH_LEN {
        let Some(instruction) = instructions.get(index) else {
            return Err(HookError::Undecodable { addr: ip, at: decoded.end });
        };
        covered += instruction.len();
        index += 1;
        if ends_flow(instruction) {
            if covered < PATCH_LEN {
                return Err(HookError::TooShort { addr: ip, len: covered });
            }
            falls_through = false;
        }
    }
    let stolen = instructions[first_stolen..index].to_vec();
    let stolen_offsets = decoded.offsets[first_stolen..index].to_vec();
    let patch_end = patch_at.wrapping_add(covered as u64);

    // No branch may land inside the stolen bytes, except on the first one (that is a call or
    // tail call of the function itself: it now goes through the detour, like any other call).
    // Branches among the stolen instructions may target their starts: BlockEncoder retargets
    // those to the relocated copies.
    let inside = |target: u64| target > patch_at && target < patch_end;
    for (position, instruction) in instructions.iter().enumerate() {
        let Some(target) = branch_target(instruction) else { continue };
        if !inside(target) {
            continue;
        }
        let internal = (first_stolen..index).contains(&position);
        if internal && stolen.iter().any(|s| s.ip() == target) {
            continue;
        }
        return Err(HookError::BranchIntoPatch { addr: ip, from: instruction.ip(), to: target });
    }

    let stolen_bytes = code
        .get(patch_offset..patch_offset + covered)
        .ok_or(HookError::Undecodable { addr: ip, at: decoded.end })?
        .to_vec();
    Ok(Plan { ip, patch_offset, stolen, stolen_offsets, stolen_bytes, falls_through })
}

impl Plan {
    /// The function's address, as given to [`plan`].
    pub fn function(&self) -> u64 {
        self.ip
    }

    /// Offset of the patch from the function's start: 4 after a kept `endbr64`, else 0.
    pub fn patch_offset(&self) -> usize {
        self.patch_offset
    }

    /// Address where the `jmp rel32` is written.
    pub fn patch_address(&self) -> u64 {
        self.ip.wrapping_add(self.patch_offset as u64)
    }

    /// Number of bytes stolen from the patch address on (≥ 5: whole instructions).
    pub fn stolen_len(&self) -> usize {
        self.stolen_bytes.len()
    }

    /// The original bytes the stolen instructions occupied.
    pub fn stolen_bytes(&self) -> &[u8] {
        &self.stolen_bytes
    }

    /// How many instructions are stolen. With one, no other thread can be stopped in the middle
    /// of the patched bytes while they are written; with more, one that is between two of them
    /// at that moment would resume inside the jump (see the crate docs).
    pub fn stolen_instructions(&self) -> usize {
        self.stolen.len()
    }

    /// Where the trampoline jumps back to: the first instruction that was not stolen.
    pub fn resume_address(&self) -> u64 {
        self.patch_address().wrapping_add(self.stolen_len() as u64)
    }

    /// False when the last stolen instruction never falls through (`jmp`, `ret`, `ud2`, …), so
    /// the trampoline needs no jump back.
    pub fn falls_through(&self) -> bool {
        self.falls_through
    }

    /// The inclusive range of addresses where a trampoline may start: within ±2 GiB (less some
    /// slack) of the patch site and of every RIP-relative memory operand of the stolen code,
    /// since those cannot be re-encoded farther away. `None` when the ranges do not intersect.
    pub fn trampoline_window(&self) -> Option<(u64, u64)> {
        let mut lowest = self.patch_address();
        let mut highest = lowest;
        for instruction in &self.stolen {
            if instruction.is_ip_rel_memory_operand() {
                let target = instruction.ip_rel_memory_address();
                lowest = lowest.min(target);
                highest = highest.max(target);
            }
        }
        near_window_of(lowest, highest)
    }

    /// This plan as a [`Recipe`] for the same bytes in another process: `window` must be the
    /// `code` the plan was made from. `None` when a stolen instruction is not one a recipe can
    /// move by copying (a `loop` or `jrcxz`, a branch between stolen instructions, a prefixed
    /// short branch): such a function is decoded wherever it is hooked.
    pub fn recipe(&self, window: &[u8]) -> Option<Recipe> {
        let mut pieces = Vec::with_capacity(self.stolen.len());
        let mut offset = 0;
        for (instruction, offsets) in self.stolen.iter().zip(&self.stolen_offsets) {
            let bytes = self.stolen_bytes.get(offset..offset + instruction.len())?;
            offset += instruction.len();
            let len = u8::try_from(bytes.len()).ok()?;
            let piece = if let Some(target) = branch_target(instruction) {
                let start = self.patch_address();
                if target > start && target < start.wrapping_add(self.stolen_len() as u64) {
                    return None;
                }
                match bytes {
                    [op, _] if instruction.is_jcc_short() && op & 0xF0 == 0x70 => Piece::ShortJcc { cc: op & 0x0F },
                    [0xEB, _] if instruction.is_jmp_short() => Piece::ShortJmp,
                    _ if instruction.is_jcc_near() || instruction.is_jmp_near() || instruction.is_call_near() => {
                        Piece::NearBranch { len }
                    }
                    _ => return None,
                }
            } else if instruction.is_ip_rel_memory_operand() {
                if offsets.displacement_size() != 4 {
                    return None;
                }
                Piece::RipRelative { len, disp: u8::try_from(offsets.displacement_offset()).ok()? }
            } else {
                Piece::Copy { len }
            };
            pieces.push(piece);
        }
        Recipe::new(window, self.patch_offset, self.falls_through, pieces)
    }

    /// Re-encodes the stolen instructions for a trampoline at address `at`, followed by a jump
    /// back to [`Plan::resume_address`] when they fall through. A kept `endbr64` is repeated
    /// first. RIP-relative operands and relative branches are rewritten to reach their original
    /// targets; a branch too far for rel32 becomes `jmp`/`call [rip+d]` through a pointer
    /// appended to the code, and a short `jcc` an inverted `jcc` over such a jump.
    pub fn relocate(&self, at: u64) -> Result<Vec<u8>, HookError> {
        let mut code = Vec::with_capacity(64);
        let mut block_ip = at;
        if self.patch_offset == ENDBR64.len() {
            code.extend_from_slice(&ENDBR64);
            block_ip = at.wrapping_add(ENDBR64.len() as u64);
        }
        let mut instructions = self.stolen.clone();
        if self.falls_through {
            // ip 0 (iced's default for created instructions) keeps the jump out of the block's
            // map from original addresses to instructions.
            let back = Instruction::with_branch(Code::Jmp_rel32_64, self.resume_address())
                .map_err(|e| HookError::Relocate { addr: self.ip, reason: e.to_string() })?;
            instructions.push(back);
        }
        let block = InstructionBlock::new(&instructions, block_ip);
        let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
            .map_err(|e| HookError::Relocate { addr: self.ip, reason: e.to_string() })?;
        code.extend_from_slice(&encoded.code_buffer);
        Ok(code)
    }
}

/// The inclusive range of addresses from which a rel32 displacement (with slack) reaches both
/// `lowest` and `highest`, clipped to user space. `None` when empty.
pub(crate) fn near_window_of(lowest: u64, highest: u64) -> Option<(u64, u64)> {
    let reach = REL32_REACH - WINDOW_SLACK;
    let low = highest.saturating_sub(reach).max(MIN_USER_ADDR);
    let high = lowest.saturating_add(reach).min(MAX_USER_ADDR);
    (low <= high).then_some((low, high))
}

/// The 5 bytes of `jmp rel32` at `from` to `to`, or `None` when `to` is out of rel32 reach.
pub fn jmp_rel32(from: u64, to: u64) -> Option<[u8; PATCH_LEN]> {
    let displacement = to.wrapping_sub(from.wrapping_add(PATCH_LEN as u64)) as i64;
    let rel = i32::try_from(displacement).ok()?;
    let [a, b, c, d] = rel.to_le_bytes();
    Some([0xE9, a, b, c, d])
}

/// `jmp [rip+0]` followed by the absolute target: 14 bytes that reach any address. Used as the
/// near thunk when a detour is out of rel32 reach of the function.
pub fn jmp_abs64(to: u64) -> [u8; 14] {
    let mut code = [0u8; 14];
    code[..6].copy_from_slice(&[0xFF, 0x25, 0, 0, 0, 0]);
    code[6..].copy_from_slice(&to.to_le_bytes());
    code
}
