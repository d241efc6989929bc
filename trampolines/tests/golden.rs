//! Golden byte tables for the relocator: original bytes at `IP`, the stolen length, and the
//! exact trampoline bytes expected at a given address. One instruction per line, with its
//! disassembly. Nothing here executes code.

use hermes_trampolines::{plan, HookError, Plan};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// Where the original function sits.
const IP: u64 = 0x7f00_0000_1000;
/// A trampoline 256 MiB above: every original target is within rel32 reach.
const NEAR: u64 = 0x7f00_1000_0000;
/// A trampoline 5 GiB above: out of rel32 reach, branches need their long forms.
const FAR: u64 = 0x7f01_5000_0000;

fn disassemble(code: &[u8], ip: u64) -> String {
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    for instruction in Decoder::with_ip(64, code, ip, DecoderOptions::NONE) {
        let offset = (instruction.ip() - ip) as usize;
        let bytes: Vec<String> = code[offset..offset + instruction.len()].iter().map(|b| format!("{b:02x}")).collect();
        let mut text = String::new();
        formatter.format(&instruction, &mut text);
        out += &format!("  {:#x}: {:<30} {text}\n", instruction.ip(), bytes.join(" "));
    }
    out
}

fn planned(original: &[u8]) -> Plan {
    plan(original, IP).unwrap_or_else(|e| panic!("plan refused:\n{}{e}", disassemble(original, IP)))
}

/// Plans `original`, checks the stolen length, relocates at `at` and compares with `expected`.
fn check(original: &[u8], stolen: usize, at: u64, expected: &[u8]) -> Plan {
    let plan = planned(original);
    assert_eq!(plan.stolen_len(), stolen, "stolen length of\n{}", disassemble(original, IP));
    let relocated = plan.relocate(at).expect("relocate");
    assert_eq!(
        relocated,
        expected,
        "\nrelocated at {at:#x}:\n{}expected:\n{}",
        disassemble(&relocated, at),
        disassemble(expected, at)
    );
    plan
}

#[test]
fn plain_prologue() {
    #[rustfmt::skip]
    let original = [
        0x55,                               // push rbp
        0x48, 0x89, 0xe5,                   // mov rbp,rsp
        0x48, 0x83, 0xec, 0x10,             // sub rsp,10h
        0x89, 0x7d, 0xfc,                   // mov [rbp-4],edi
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let expected = [
        0x55,                               // 7f0010000000: push rbp
        0x48, 0x89, 0xe5,                   // 7f0010000001: mov rbp,rsp
        0x48, 0x83, 0xec, 0x10,             // 7f0010000004: sub rsp,10h
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,       // 7f0010000008: jmp 7F0000001008h (resume)
    ];
    let plan = check(&original, 8, NEAR, &expected);
    assert_eq!(plan.patch_offset(), 0);
    assert_eq!(plan.patch_address(), IP);
    assert_eq!(plan.resume_address(), IP + 8);
    assert_eq!(plan.stolen_bytes(), &original[..8]);
    assert_eq!(plan.stolen_instructions(), 3);
    assert!(plan.falls_through());
}

#[test]
fn plain_prologue_far_jumps_back_through_a_pointer() {
    let original = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x89, 0x7d, 0xfc, 0xc3];
    #[rustfmt::skip]
    let expected = [
        0x55,                               // 7f0150000000: push rbp
        0x48, 0x89, 0xe5,                   // 7f0150000001: mov rbp,rsp
        0x48, 0x83, 0xec, 0x10,             // 7f0150000004: sub rsp,10h
        0xff, 0x25, 0x02, 0x00, 0x00, 0x00, // 7f0150000008: jmp qword ptr [7F0150000010h]
        0xcc, 0xcc,                         // 7f015000000e: int3 padding
        0x08, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // 7f0150000010: .quad 7F0000001008h (resume)
    ];
    check(&original, 8, FAR, &expected);
}

#[test]
fn endbr64_prologue_keeps_the_landing_pad() {
    #[rustfmt::skip]
    let original = [
        0xf3, 0x0f, 0x1e, 0xfa,             // endbr64 (stays in place)
        0x55,                               // push rbp
        0x48, 0x89, 0xe5,                   // mov rbp,rsp
        0x41, 0x57,                         // push r15
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let expected = [
        0xf3, 0x0f, 0x1e, 0xfa,             // 7f0010000000: endbr64
        0x55,                               // 7f0010000004: push rbp
        0x48, 0x89, 0xe5,                   // 7f0010000005: mov rbp,rsp
        0x41, 0x57,                         // 7f0010000008: push r15
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,       // 7f001000000a: jmp 7F000000100Ah (resume)
    ];
    let plan = check(&original, 6, NEAR, &expected);
    assert_eq!(plan.patch_offset(), 4);
    assert_eq!(plan.patch_address(), IP + 4);
    assert_eq!(plan.resume_address(), IP + 10);
    assert_eq!(plan.stolen_bytes(), &original[4..10]);
}

#[test]
fn endbr64_then_call_rel32() {
    #[rustfmt::skip]
    let original = [
        0xf3, 0x0f, 0x1e, 0xfa,             // endbr64
        0xe8, 0x00, 0x01, 0x00, 0x00,       // call 7F0000001109h
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let expected = [
        0xf3, 0x0f, 0x1e, 0xfa,             // 7f0010000000: endbr64
        0xe8, 0x00, 0x11, 0x00, 0xf0,       // 7f0010000004: call 7F0000001109h
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,       // 7f0010000009: jmp 7F0000001009h (resume)
    ];
    check(&original, 5, NEAR, &expected);
}

#[test]
fn rip_relative_mov() {
    #[rustfmt::skip]
    let original = [
        0x48, 0x8b, 0x05, 0x10, 0x20, 0x00, 0x00, // mov rax,[7F0000003017h]
        0x48, 0x85, 0xc0,                         // test rax,rax
        0xc3,                                     // ret
    ];
    #[rustfmt::skip]
    let expected = [
        0x48, 0x8b, 0x05, 0x10, 0x30, 0x00, 0xf0, // 7f0010000000: mov rax,[7F0000003017h]
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,             // 7f0010000007: jmp 7F0000001007h (resume)
    ];
    let plan = check(&original, 7, NEAR, &expected);
    // The trampoline must stay within rel32 reach of the data it reads.
    let (low, high) = plan.trampoline_window().expect("window");
    assert!(low <= NEAR && NEAR <= high);
    assert!(high - 0x7f00_0000_3017 < 1 << 31 && 0x7f00_0000_3017 - low < 1 << 31);
    assert!(plan.relocate(low).is_ok() && plan.relocate(high).is_ok());
}

#[test]
fn rip_relative_lea() {
    #[rustfmt::skip]
    let original = [
        0x48, 0x8d, 0x3d, 0xf0, 0xff, 0xff, 0xff, // lea rdi,[7F0000000FF7h]
        0xe9, 0x00, 0x00, 0x00, 0x00,             // jmp 7F000000100Ch
    ];
    #[rustfmt::skip]
    let expected = [
        0x48, 0x8d, 0x3d, 0xf0, 0x0f, 0x00, 0xf0, // 7f0010000000: lea rdi,[7F0000000FF7h]
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,             // 7f0010000007: jmp 7F0000001007h (resume)
    ];
    check(&original, 7, NEAR, &expected);
}

#[test]
fn rip_relative_out_of_reach_is_a_relocate_error() {
    let original = [0x48, 0x8b, 0x05, 0x10, 0x20, 0x00, 0x00, 0x48, 0x85, 0xc0, 0xc3];
    let plan = planned(&original);
    let err = plan.relocate(FAR).expect_err("data 5 GiB away cannot be reached");
    assert!(matches!(err, HookError::Relocate { addr: IP, .. }), "{err}");
    let (_, high) = plan.trampoline_window().expect("window");
    assert!(FAR > high, "FAR is outside the advertised window");
}

#[test]
fn jcc_rel8_pointing_outside() {
    #[rustfmt::skip]
    let original = [
        0x85, 0xff,                         // test edi,edi
        0x74, 0x10,                         // je short 7F0000001014h
        0x48, 0x89, 0xf8,                   // mov rax,rdi
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let near = [
        0x85, 0xff,                         // 7f0010000000: test edi,edi
        0x0f, 0x84, 0x0c, 0x10, 0x00, 0xf0, // 7f0010000002: je 7F0000001014h (rel32 now)
        0x48, 0x89, 0xf8,                   // 7f0010000008: mov rax,rdi
        0xe9, 0xf7, 0x0f, 0x00, 0xf0,       // 7f001000000b: jmp 7F0000001007h (resume)
    ];
    check(&original, 7, NEAR, &near);
    #[rustfmt::skip]
    let far = [
        0x85, 0xff,                         // 7f0150000000: test edi,edi
        0x75, 0x06,                         // 7f0150000002: jne short 7F015000000Ah (inverted)
        0xff, 0x25, 0x0e, 0x00, 0x00, 0x00, // 7f0150000004: jmp qword ptr [7F0150000018h]
        0x48, 0x89, 0xf8,                   // 7f015000000a: mov rax,rdi
        0xff, 0x25, 0x0d, 0x00, 0x00, 0x00, // 7f015000000d: jmp qword ptr [7F0150000020h]
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc,       // 7f0150000013: int3 padding
        0x14, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // 7f0150000018: .quad 7F0000001014h (je target)
        0x07, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // 7f0150000020: .quad 7F0000001007h (resume)
    ];
    check(&original, 7, FAR, &far);
}

#[test]
fn jmp_rel8_pointing_outside_ends_the_trampoline() {
    #[rustfmt::skip]
    let original = [
        0x85, 0xff,                         // test edi,edi
        0x75, 0x05,                         // jne short 7F0000001009h
        0xeb, 0x10,                         // jmp short 7F0000001016h
        0x90,                               // nop
    ];
    #[rustfmt::skip]
    let expected = [
        0x85, 0xff,                         // 7f0010000000: test edi,edi
        0x0f, 0x85, 0x01, 0x10, 0x00, 0xf0, // 7f0010000002: jne 7F0000001009h
        0xe9, 0x09, 0x10, 0x00, 0xf0,       // 7f0010000008: jmp 7F0000001016h (no jump back after it)
    ];
    let plan = check(&original, 6, NEAR, &expected);
    assert!(!plan.falls_through());
}

#[test]
fn call_rel32() {
    #[rustfmt::skip]
    let original = [
        0xe8, 0x00, 0x01, 0x00, 0x00,       // call 7F0000001105h
        0x48, 0x98,                         // cdqe
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let near = [
        0xe8, 0x00, 0x11, 0x00, 0xf0,       // 7f0010000000: call 7F0000001105h
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,       // 7f0010000005: jmp 7F0000001005h (resume)
    ];
    check(&original, 5, NEAR, &near);
    #[rustfmt::skip]
    let far = [
        0xff, 0x15, 0x0a, 0x00, 0x00, 0x00, // 7f0150000000: call qword ptr [7F0150000010h]
        0xff, 0x25, 0x0c, 0x00, 0x00, 0x00, // 7f0150000006: jmp qword ptr [7F0150000018h]
        0xcc, 0xcc, 0xcc, 0xcc,             // 7f015000000c: int3 padding
        0x05, 0x11, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // 7f0150000010: .quad 7F0000001105h (callee)
        0x05, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // 7f0150000018: .quad 7F0000001005h (resume)
    ];
    check(&original, 5, FAR, &far);
}

#[test]
fn branch_within_stolen_bytes_is_retargeted_to_the_copy() {
    #[rustfmt::skip]
    let original = [
        0x90,                               // nop
        0xff, 0xc9,                         // dec ecx            <- loop
        0x75, 0xfc,                         // jne short 7F0000001001h
        0xb8, 0x01, 0x00, 0x00, 0x00,       // mov eax,1
        0xc3,                               // ret
    ];
    #[rustfmt::skip]
    let expected = [
        0x90,                               // 7f0010000000: nop
        0xff, 0xc9,                         // 7f0010000001: dec ecx
        0x75, 0xfc,                         // 7f0010000003: jne short 7F0010000001h (the copy)
        0xe9, 0xfb, 0x0f, 0x00, 0xf0,       // 7f0010000005: jmp 7F0000001005h (resume)
    ];
    check(&original, 5, NEAR, &expected);
}

#[test]
fn refuses_ret_within_five_bytes() {
    #[rustfmt::skip]
    let original = [
        0x31, 0xc0,                         // xor eax,eax
        0xc3,                               // ret
        0xcc, 0xcc, 0xcc, 0xcc,             // int3 padding (or the next function)
    ];
    let err = plan(&original, IP).expect_err("a 3-byte function cannot take a 5-byte jump");
    assert_eq!(err, HookError::TooShort { addr: IP, len: 3 });
    let message = err.to_string();
    assert!(message.contains("0x7f0000001000") && message.contains("3 bytes"), "{message}");

    // The same after endbr64, and with jmp rel8, ud2 and int3 as the end.
    for (code, len) in [
        (&[0xf3, 0x0f, 0x1e, 0xfa, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc][..], 1),
        (&[0xeb, 0x10, 0x90, 0x90, 0x90, 0x90][..], 2),
        (&[0x90, 0x0f, 0x0b, 0x90, 0x90, 0x90][..], 3),
        (&[0x31, 0xc0, 0xcc, 0x90, 0x90, 0x90][..], 3),
        (&[0x48, 0x89, 0xf8, 0xff, 0xe7, 0x90, 0x90][..], 5), // jmp rdi ends at 5: allowed
    ] {
        match plan(code, IP) {
            Err(HookError::TooShort { len: got, .. }) => assert_eq!(got, len, "{code:02x?}"),
            Ok(p) => assert_eq!((p.stolen_len(), p.falls_through()), (len, false), "{code:02x?}"),
            Err(e) => panic!("{code:02x?}: {e}"),
        }
    }
}

#[test]
fn refuses_branch_back_into_stolen_bytes() {
    #[rustfmt::skip]
    let original = [
        0x48, 0x89, 0xf8,                   // mov rax,rdi
        0x48, 0x83, 0xc0, 0x01,             // add rax,1          <- loop, inside the patch
        0x48, 0x39, 0xf0,                   // cmp rax,rsi
        0x72, 0xf7,                         // jb short 7F0000001003h
        0xc3,                               // ret
    ];
    let err = plan(&original, IP).expect_err("the loop would jump into the middle of the jmp");
    assert_eq!(err, HookError::BranchIntoPatch { addr: IP, from: IP + 10, to: IP + 3 });
    assert!(err.to_string().contains("0x7f000000100a branches to 0x7f0000001003"), "{err}");
}

#[test]
fn refuses_internal_branch_into_the_middle_of_an_instruction() {
    #[rustfmt::skip]
    let original = [
        0x75, 0x01,                         // jne short 7F0000001003h (into the mov below)
        0xb8, 0x90, 0x90, 0x90, 0x90,       // mov eax,90909090h
        0xc3,                               // ret
    ];
    let err = plan(&original, IP).expect_err("target is not an instruction start");
    assert_eq!(err, HookError::BranchIntoPatch { addr: IP, from: IP, to: IP + 3 });
}

#[test]
fn allows_branches_to_the_entry_and_past_the_patch() {
    #[rustfmt::skip]
    let original = [
        0x48, 0x89, 0xf8,                   // mov rax,rdi
        0x48, 0x83, 0xc0, 0x01,             // add rax,1
        0x74, 0xf7,                         // je short 7F0000001000h (entry: re-enters the detour)
        0x75, 0xfc,                         // jne short 7F0000001007h (first byte not stolen)
        0xc3,                               // ret
    ];
    let plan = planned(&original);
    assert_eq!(plan.stolen_len(), 7);
}

#[test]
fn undecodable_and_truncated_code() {
    // 0x06 (push es) does not exist in 64-bit mode.
    assert_eq!(
        plan(&[0x06, 0x90, 0x90, 0x90, 0x90, 0x90], IP).unwrap_err(),
        HookError::Undecodable { addr: IP, at: IP }
    );
    // The readable bytes end inside the second instruction.
    assert_eq!(plan(&[0x48, 0x89, 0xe5, 0x48, 0x83], IP).unwrap_err(), HookError::Undecodable { addr: IP, at: IP + 3 });
    assert_eq!(plan(&[], IP).unwrap_err(), HookError::Undecodable { addr: IP, at: IP });
}

#[test]
fn jump_encodings() {
    assert_eq!(hermes_trampolines::jmp_rel32(0x1000, 0x1005), Some([0xe9, 0, 0, 0, 0]));
    assert_eq!(hermes_trampolines::jmp_rel32(0x1000, 0x1000), Some([0xe9, 0xfb, 0xff, 0xff, 0xff]));
    assert_eq!(hermes_trampolines::jmp_rel32(0x1000, 0x1_0000_1000), None);
    assert_eq!(
        hermes_trampolines::jmp_abs64(0x1122_3344_5566_7788),
        [0xff, 0x25, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
    );
}

/// A small deterministic generator, so the fuzz test needs no dependency and fails reproducibly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random prologues: plan and relocate never panic, and what they accept is consistent.
#[test]
fn fuzz_random_prologues() {
    // Common prologue fragments, so that many inputs decode past the first instruction.
    let fragments: &[&[u8]] = &[
        &[0xf3, 0x0f, 0x1e, 0xfa],
        &[0x55],
        &[0x48, 0x89, 0xe5],
        &[0x41, 0x57],
        &[0x48, 0x83, 0xec, 0x18],
        &[0x48, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00],
        &[0x74, 0x08],
        &[0x75, 0xf0],
        &[0xeb, 0x02],
        &[0xe8, 0x10, 0x00, 0x00, 0x00],
        &[0xe9, 0x00, 0x01, 0x00, 0x80],
        &[0x0f, 0x84, 0x00, 0x00, 0x00, 0x00],
        &[0xc3],
        &[0xe3, 0x04],
        &[0xe2, 0xfa],
        &[0xc7, 0xf8, 0x10, 0x00, 0x00, 0x00],
        &[0xc5, 0xfd, 0x6f, 0x05, 0x00, 0x10, 0x00, 0x00],
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut code = Vec::with_capacity(64);
        while code.len() < 48 {
            if rng.next() % 3 == 0 {
                code.push(rng.next() as u8);
            } else {
                code.extend_from_slice(fragments[(rng.next() % fragments.len() as u64) as usize]);
            }
        }
        let ip = rng.next() & 0x7fff_ffff_fff0;
        let Ok(plan) = plan(&code, ip) else { continue };
        assert!(plan.stolen_len() >= 5 && plan.stolen_len() <= 19, "{code:02x?}");
        assert_eq!(plan.stolen_bytes(), &code[plan.patch_offset()..plan.patch_offset() + plan.stolen_len()]);
        if let Some((low, high)) = plan.trampoline_window() {
            let at = low + (rng.next() % (high - low + 1));
            if let Ok(relocated) = plan.relocate(at) {
                accepted += 1;
                assert!(relocated.len() <= 512, "{code:02x?}");
                let decodes = Decoder::with_ip(64, &relocated, at, DecoderOptions::NONE).into_iter().count();
                assert!(decodes > 0);
            }
        }
        let _ = plan.relocate(rng.next());
    }
    assert!(accepted > 1000, "only {accepted} random prologues relocated");
}
