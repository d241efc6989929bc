# Sourced by the bench scripts: `release_hermes ROOT` leaves in HERMES the hermes to
# measure: the caller's HERMES when set, else the release build in ROOT, built
# incrementally here. Stops the script when there is no such binary.
release_hermes() {
    if [[ -z ${HERMES:-} ]]; then
        echo "bench: building hermes (release, incremental)" >&2
        (cd "$1" && cargo build --release --quiet -p hermes-launcher -p hermes-preload)
        HERMES=$1/target/release/hermes
    fi
    [[ -x $HERMES ]] || {
        echo "bench: no hermes binary at $HERMES" >&2
        exit 1
    }
}
