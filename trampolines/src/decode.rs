//! Step 1 of the pipeline: decode the first bytes of a function with iced-x86.

use iced_x86::{Code, ConstantOffsets, Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

/// How many bytes from the function's start are decoded and searched for branches back into the
/// patched bytes. A branch from farther away into the first few bytes of a function is very rare
/// (it would be a loop whose header is the function's second instruction).
pub const SCAN_WINDOW: usize = 64;

/// The decoded start of a function.
pub(crate) struct Decoded {
    /// Valid instructions from the start, in order, stopping at the first invalid or truncated one.
    pub instructions: Vec<Instruction>,
    /// Where each instruction's displacement and immediates sit in its bytes.
    pub offsets: Vec<ConstantOffsets>,
    /// Address of the first byte that did not decode (the end of `code` when everything decoded).
    pub end: u64,
}

/// Decodes `code`, which sits at address `ip`, until the first invalid or truncated instruction.
pub(crate) fn decode(code: &[u8], ip: u64) -> Decoded {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instructions = Vec::with_capacity(24);
    let mut offsets = Vec::with_capacity(24);
    let mut end = ip.wrapping_add(code.len() as u64);
    while decoder.can_decode() {
        let position = decoder.position();
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            end = ip.wrapping_add(position as u64);
            break;
        }
        offsets.push(decoder.get_constant_offsets(&instruction));
        instructions.push(instruction);
    }
    Decoded { instructions, offsets, end }
}

/// True for `endbr64`, the CET landing pad that starts most functions of a CET-enabled libc.
pub(crate) fn is_endbr64(instruction: &Instruction) -> bool {
    instruction.code() == Code::Endbr64
}

/// True when execution never falls through to the next instruction: `ret`, `jmp`, `ud2`,
/// `int3`, … After such an instruction the bytes may belong to another function.
pub(crate) fn ends_flow(instruction: &Instruction) -> bool {
    match instruction.flow_control() {
        FlowControl::Return
        | FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Exception => true,
        FlowControl::Interrupt => matches!(instruction.code(), Code::Int3 | Code::Int1),
        _ => false,
    }
}

/// The target of a relative branch (`jmp`, `jcc`, `call`, `loop`, `jrcxz`, `xbegin`), if any.
pub(crate) fn branch_target(instruction: &Instruction) -> Option<u64> {
    (0..instruction.op_count())
        .any(|i| matches!(instruction.op_kind(i), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64))
        .then(|| instruction.near_branch_target())
}
