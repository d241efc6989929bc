//! Library-level API tracing: `hermes launch --hook LIB:SYMBOL` on real programs,
//! with signatures declared by the policy, decisions, and libraries loaded later.

use hermes_tests::{c_program, hermes_bin, launch};

#[test]
fn the_readme_example_traces_deflate_in_python() {
    let run =
        launch("function on_api(ev) end\n", "python3", &["-c", "import zlib; print(len(zlib.compress(b'a'*100000)))"])
            .launch_option("--hook=libz.so.1:deflate")
            .run();
    run.check(run.code == 0 && run.stdout.trim().parse::<u32>().is_ok_and(|n| n > 0), "python compressed");
    let calls = run.calls("api");
    run.check(!calls.is_empty(), "deflate calls traced");
    for c in &calls {
        run.check(c["call"] == "deflate" && c["args"]["lib"] == "libz.so.1", "named by symbol and library");
        run.check(c["args"]["raw"].as_array().is_some_and(|r| r.len() == 6), "raw integer arguments");
        run.check(
            c["result"].is_number() && c["duration_us"].is_number() && c["tid"].is_number(),
            "result, duration, thread",
        );
    }
    // zlib.compress finishes with Z_STREAM_END (1).
    run.check(calls.last().is_some_and(|c| c["result"] == 1), "the last deflate returned Z_STREAM_END");
    let _ = hermes_bin();
}

const PUTS_POLICY: &str = r#"
hermes.hook("libc.so.6:puts", {"cstr"})
function on_api(ev)
  local text = ev.args[1]
  if text == "secret" then return hermes.deny("EACCES") end
  if text == "fake" then return hermes.emulate(42) end
end
"#;

#[test]
fn a_policy_decodes_denies_and_emulates_hooked_calls() {
    let run = launch(PUTS_POLICY, c_program("api_target"), &["puts", "hello", "secret", "fake", "bye"]).run();
    let out: Vec<&str> = run.stdout.lines().collect();
    run.check(out == ["hello", "rc=6", "rc=-1", "rc=42", "bye", "rc=4"], &format!("puts outcomes: {out:?}"));
    let calls = run.calls("api");
    let texts: Vec<&str> = calls.iter().filter_map(|c| c["args"]["args"][0].as_str()).collect();
    run.check(texts == ["hello", "secret", "fake", "bye"], "the C string argument decoded by the declared signature");
    run.check(calls[1]["decision"] == "deny" && calls[1]["errno"] == "EACCES", "denied");
    run.check(calls[2]["decision"] == "emulate" && calls[2]["result"] == 42, "emulated");
    run.check(calls[0]["result"] == 6, "the real result of an allowed call");
}

#[test]
fn stack_arguments_and_vector_registers_survive_the_hook() {
    let run = launch("function on_api(ev) end\n", c_program("api_target"), &["printf"])
        .launch_option("--hook=libc.so.6:printf")
        .run();
    run.check(run.stdout.starts_with("1 2 3 4 5 6 7 8 1.50 2.25\nn=26"), "printf printed every argument");
    run.check(run.calls("api").iter().any(|c| c["call"] == "printf" && c["result"] == 26), "traced with its result");
}

#[test]
fn libraries_loaded_later_with_dlopen_are_hooked() {
    let run =
        launch("hermes.hook('libz.so.1:zlibVersion')\nfunction on_api(ev) end\n", c_program("api_target"), &["zlib"])
            .run();
    run.check(run.stdout.starts_with("zlib 1."), "zlibVersion ran");
    run.check(run.calls("api").iter().any(|c| c["call"] == "zlibVersion"), "the call in a dlopened library was traced");
}

#[test]
fn bad_hook_specs_are_refused_before_the_target_runs() {
    let run = launch("function on_api(ev) end\n", c_program("api_target"), &["puts", "x"])
        .launch_option("--hook=no-colon")
        .run();
    run.check(run.code == 2 && run.stderr.contains("not LIB:SYMBOL") && run.stdout.is_empty(), "refused");
    // A program the preload cannot enter has no library functions to hook.
    let run = launch("function on_api(ev) end\n", c_program("static_calls"), &["pid"])
        .launch_option("--hook=libc.so.6:puts")
        .run();
    run.check(
        run.code == 2 && run.stderr.contains("cannot enter") && run.stderr.contains("a statically linked program"),
        "a static program: refused, saying why",
    );
    run.check(run.stdout.is_empty(), "before it ran");
}

#[test]
fn a_hook_can_send_the_callers_backtrace() {
    let policy = "hermes.hook('libc.so.6:puts', {'cstr'}, {backtrace = true})\nfunction on_api(ev) end\n";
    let run = launch(policy, c_program("api_target"), &["puts", "traced"]).run();
    let call = run.calls("api").into_iter().find(|c| c["args"]["args"][0] == "traced").cloned().unwrap_or_default();
    let frames: Vec<&str> =
        call["args"]["backtrace"].as_array().map(|a| a.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
    // Innermost first: main() in api_target called puts, and libc's start code called main.
    run.check(frames.first().is_some_and(|f| f.contains("/api_target-") && f.contains("+0x")), "the caller: main");
    run.check(frames.iter().any(|f| f.contains("libc.so.6+0x")), "then libc's start code");
    // Without the option, no backtrace.
    let plain = launch(PUTS_POLICY, c_program("api_target"), &["puts", "x"]).run();
    plain.check(plain.calls("api").iter().all(|c| c["args"]["backtrace"].is_null()), "only when asked");
    // --backtrace does the same for --hook'ed functions.
    let cli = launch("function on_api(ev) end\n", c_program("api_target"), &["puts", "y"])
        .launch_option("--hook=libc.so.6:puts")
        .launch_option("--backtrace")
        .run();
    cli.check(
        cli.calls("api").iter().all(|c| c["args"]["backtrace"].as_array().is_some_and(|a| !a.is_empty())),
        "--backtrace",
    );
}
