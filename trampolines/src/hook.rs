//! The hook itself: the pipeline run on live code, under one process-wide lock.

use std::sync::{Mutex, MutexGuard};

use crate::decode::SCAN_WINDOW;
use crate::error::HookError;
use crate::maps;
use crate::patch::{self, Pages};
use crate::pool::Pool;
use crate::recipe::{Copied, Recipe};
use crate::relocate::{self, jmp_abs64, jmp_rel32, near_window_of, Plan, PATCH_LEN};
use crate::sys::{self, PROT_EXEC, PROT_READ};

/// Serializes every change the engine makes (pool pages, code protection, patches): two
/// threads patching the same page must not undo each other's `mprotect`.
static ENGINE: Mutex<Pool> = Mutex::new(Pool::new());

fn engine() -> MutexGuard<'static, Pool> {
    // A panic while holding the lock cannot leave the pool inconsistent in a way that matters
    // (at worst a chunk's tail is unused), so poisoning is ignored rather than propagated.
    ENGINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the first bytes of the function at `target` (up to [`SCAN_WINDOW`], never past the
/// end of its mapping) and [`plan`](crate::plan)s its hook, without changing anything.
///
/// # Safety
/// `target` must stay mapped while this runs (it is checked to be mapped, readable and
/// executable in `/proc/self/maps`, but another thread could unmap it meanwhile).
pub unsafe fn plan_at(target: *const u8) -> Result<Plan, HookError> {
    // SAFETY: forwarded.
    let code = unsafe { prologue_at(target) }?;
    relocate::plan(&code, target as u64)
}

/// The recipes hooks on functions would be made from and hand on, made without hooking
/// (for a process about to start others that hook the same library, whose first hooks then
/// need no decoder). Each function is given as its first bytes (up to [`SCAN_WINDOW`]) and the
/// address they are at, or will be at: a recipe does not depend on it, but the plan's checks
/// do. A function whose bytes one of `known` was made from takes that recipe as it is; the
/// others are decoded. Functions that cannot be planned are left out. Also says whether a
/// recipe was made by decoding (one that `known` lacked).
pub fn recipes_for(functions: &[(&[u8], u64)], known: &[Recipe]) -> (Vec<Recipe>, bool) {
    let mut decoded = false;
    let recipes = functions
        .iter()
        .filter_map(|&(code, addr)| {
            // As a hook would steal its bytes: a matching recipe, else decoded.
            let (steal, recipe) = Steal::new(code, addr, known).ok()?;
            decoded |= matches!(steal, Steal::Decoded(_));
            recipe
        })
        .collect();
    (recipes, decoded)
}

/// The bytes [`plan_at`] and [`Hook::new`] plan from: the function's first [`SCAN_WINDOW`],
/// fewer where its mapping ends.
///
/// # Safety
/// As [`plan_at`].
pub unsafe fn prologue_at(target: *const u8) -> Result<Vec<u8>, HookError> {
    let mappings = maps::read_self_maps()?;
    // SAFETY: forwarded.
    unsafe { read_prologue(&mappings, target as u64) }
}

/// The function's first bytes, up to [`SCAN_WINDOW`] and never past the end of its mapping.
///
/// # Safety
/// As [`plan_at`].
unsafe fn read_prologue(mappings: &[maps::Mapping], addr: u64) -> Result<Vec<u8>, HookError> {
    let mapping = maps::find(mappings, addr)
        .filter(|m| m.prot & PROT_READ != 0 && m.prot & PROT_EXEC != 0)
        .ok_or(HookError::NotCode { addr })?;
    let len = (mapping.end - addr).min(SCAN_WINDOW as u64) as usize;
    // SAFETY: addr..addr + len is inside a readable mapping (the caller keeps it mapped).
    Ok(unsafe { sys::read_bytes(addr, len) })
}

/// How a hook moves the instructions its jump overwrites: decoded and re-encoded, or copied
/// by a recipe.
enum Steal {
    Decoded(Plan),
    Copied(Copied),
}

impl Steal {
    /// The first matching recipe, else a decoded plan; with the recipe that describes it.
    fn new(code: &[u8], addr: u64, recipes: &[Recipe]) -> Result<(Steal, Option<Recipe>), HookError> {
        if let Some((copied, recipe)) = recipes.iter().find_map(|r| Some((r.apply(code, addr)?, r))) {
            return Ok((Steal::Copied(copied), Some(recipe.clone())));
        }
        let plan = relocate::plan(code, addr)?;
        let recipe = plan.recipe(code);
        Ok((Steal::Decoded(plan), recipe))
    }

    fn patch_address(&self) -> u64 {
        match self {
            Steal::Decoded(plan) => plan.patch_address(),
            Steal::Copied(copied) => copied.patch_address(),
        }
    }

    fn trampoline_window(&self) -> Option<(u64, u64)> {
        match self {
            Steal::Decoded(plan) => plan.trampoline_window(),
            Steal::Copied(copied) => copied.trampoline_window(),
        }
    }

    fn relocate(&self, at: u64) -> Result<Vec<u8>, HookError> {
        match self {
            Steal::Decoded(plan) => plan.relocate(at),
            Steal::Copied(copied) => copied.relocate(at),
        }
    }

    fn stolen_bytes(&self) -> &[u8] {
        match self {
            Steal::Decoded(plan) => plan.stolen_bytes(),
            Steal::Copied(copied) => copied.stolen_bytes(),
        }
    }

    fn stolen_instructions(&self) -> usize {
        match self {
            Steal::Decoded(plan) => plan.stolen_instructions(),
            Steal::Copied(copied) => copied.stolen_instructions(),
        }
    }
}

/// An inline hook on one function. Created disabled by [`Hook::new`] (the trampoline exists,
/// the function is untouched), switched with [`Hook::enable`] / [`Hook::disable`].
///
/// Dropping a `Hook` leaves the function as it is, hooked or not: hooks in the preload live
/// for the whole process. Use [`Hook::remove`] to restore the original bytes.
#[derive(Debug)]
pub struct Hook {
    target: u64,
    detour: u64,
    patch_at: u64,
    original_bytes: [u8; PATCH_LEN],
    jump: [u8; PATCH_LEN],
    trampoline: u64,
    thunk: Option<u64>,
    /// The patch's pages and their protection when the hook was made, restored after writes.
    pages: Pages,
    stolen_instructions: usize,
    /// The plan in portable form, for other processes; `None` when it has none.
    recipe: Option<Recipe>,
    /// Whether the plan came from a recipe rather than the decoder.
    from_recipe: bool,
    enabled: bool,
}

impl Hook {
    /// Plans the hook of `target`, builds its trampoline (and a near thunk to `detour` when
    /// the detour is out of rel32 reach), but does not patch yet. Store [`Hook::original`]
    /// where the detour will find it, then [`enable`](Hook::enable).
    ///
    /// # Safety
    /// `target` must be the entry of a function of this process (not the middle of an
    /// instruction stream the program also enters elsewhere, not data), and `detour` a function
    /// with the same calling convention and signature.
    pub unsafe fn new(target: *const u8, detour: *const u8) -> Result<Hook, HookError> {
        // SAFETY: forwarded to the caller.
        unsafe { Hook::with_recipes(target, detour, &[]) }
    }

    /// [`Hook::new`], building the trampoline from the first of `recipes` made from the same
    /// bytes as the function's (without decoding anything), and decoding when none is.
    /// [`Hook::recipe`] gives the plan used as a recipe for the next process.
    ///
    /// # Safety
    /// As [`Hook::new`].
    pub unsafe fn with_recipes(target: *const u8, detour: *const u8, recipes: &[Recipe]) -> Result<Hook, HookError> {
        let addr = target as u64;
        let detour = detour as u64;
        let mut pool = engine();
        let mappings = maps::around(addr)?;
        // SAFETY: the caller vouches that `target` is code of this process.
        let code = unsafe { read_prologue(&mappings, addr) }?;
        let (plan, recipe) = Steal::new(&code, addr, recipes)?;
        let from_recipe = matches!(plan, Steal::Copied(_));
        let patch_at = plan.patch_address();
        patch::write_order(patch_at).ok_or(HookError::UnsafePatchSite { addr })?;
        let pages = Pages::of(&mappings, patch_at).ok_or(HookError::NotCode { addr })?;

        let window = plan.trampoline_window().ok_or(HookError::NoNearMemory { addr })?;
        let trampoline = pool.place(addr, window, patch_at, |at| plan.relocate(at))?;

        let (destination, thunk) = match jmp_rel32(patch_at, detour) {
            Some(_) => (detour, None),
            None => {
                let window = near_window_of(patch_at, patch_at).ok_or(HookError::NoNearMemory { addr })?;
                let thunk = pool.place(addr, window, patch_at, |_| Ok(jmp_abs64(detour).to_vec()))?;
                (thunk, Some(thunk))
            }
        };
        let jump = jmp_rel32(patch_at, destination).ok_or(HookError::NoNearMemory { addr })?;
        let original_bytes: [u8; PATCH_LEN] = plan
            .stolen_bytes()
            .get(..PATCH_LEN)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(HookError::Undecodable { addr, at: patch_at })?;
        Ok(Hook {
            target: addr,
            detour,
            patch_at,
            original_bytes,
            jump,
            trampoline,
            thunk,
            pages,
            stolen_instructions: plan.stolen_instructions(),
            recipe,
            from_recipe,
            enabled: false,
        })
    }

    /// [`Hook::new`] then [`Hook::enable`]. The detour can be called before this returns, so
    /// it must not depend on [`Hook::original`] being stored somewhere by the caller; when it
    /// does (the usual case), use `new`, store `original()`, then `enable`.
    ///
    /// # Safety
    /// As [`Hook::new`] and [`Hook::enable`].
    pub unsafe fn install(target: *const u8, detour: *const u8) -> Result<Hook, HookError> {
        // SAFETY: forwarded to the caller.
        let mut hook = unsafe { Hook::new(target, detour) }?;
        // SAFETY: forwarded to the caller.
        unsafe { hook.enable() }?;
        Ok(hook)
    }

    /// Writes the jump: from now on calls to the function run the detour. Does nothing if
    /// already enabled. Fails with [`HookError::TargetChanged`] if the function's first bytes
    /// are no longer those the hook was planned on.
    ///
    /// # Safety
    /// The function must still be mapped (its library not unloaded). The detour must be ready
    /// to run (whatever it needs, such as the stored [`Hook::original`], in place), and remain
    /// valid while the hook is enabled.
    pub unsafe fn enable(&mut self) -> Result<(), HookError> {
        if self.enabled {
            return Ok(());
        }
        let _pool = engine();
        // SAFETY: patch_at is the function's patch site (planned in `new`); the jump is a
        // complete instruction to the detour or its thunk, and the stolen instructions live on
        // in the trampoline. `replace` checks the bytes are still the original ones.
        let mut written = false;
        let result = unsafe {
            patch::replace(self.target, self.patch_at, &self.pages, &self.original_bytes, &self.jump, &mut written)
        };
        self.enabled = written;
        result
    }

    /// Writes the original bytes back: calls run the original function again. Does nothing if
    /// not enabled. Threads already in the detour or the trampoline finish normally (the
    /// trampoline stays valid forever). Fails with [`HookError::TargetChanged`] if the jump
    /// was overwritten (another hook on the same function installed after this one).
    ///
    /// # Safety
    /// The function must still be mapped. Nothing else may rely on the patch staying in place.
    pub unsafe fn disable(&mut self) -> Result<(), HookError> {
        if !self.enabled {
            return Ok(());
        }
        let _pool = engine();
        // SAFETY: writes back the exact bytes that were there; `replace` checks the jump is
        // still ours.
        let mut written = false;
        let result = unsafe {
            patch::replace(self.target, self.patch_at, &self.pages, &self.jump, &self.original_bytes, &mut written)
        };
        self.enabled = !written;
        result
    }

    /// Disables the hook and consumes it (the detach of frida's Interceptor).
    ///
    /// # Safety
    /// As [`Hook::disable`].
    pub unsafe fn remove(mut self) -> Result<(), HookError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.disable() }
    }

    /// The address to call to run the original function: the trampoline. Valid for the rest
    /// of the process, whether the hook is enabled or not.
    pub fn original(&self) -> *const u8 {
        self.trampoline as *const u8
    }

    /// The hooked function.
    pub fn target(&self) -> *const u8 {
        self.target as *const u8
    }

    /// The detour the function jumps to while the hook is enabled.
    pub fn detour(&self) -> *const u8 {
        self.detour as *const u8
    }

    /// Where the jump is written: the function, or 4 bytes in after an `endbr64`.
    pub fn patch_address(&self) -> *const u8 {
        self.patch_at as *const u8
    }

    /// The near thunk `jmp [rip+0]; .quad detour`, when the detour is out of rel32 reach.
    pub fn thunk(&self) -> Option<*const u8> {
        self.thunk.map(|t| t as *const u8)
    }

    /// How many instructions the patch steals (1 means patching is safe even while other
    /// threads run the function; see [`Plan::stolen_instructions`]).
    pub fn stolen_instructions(&self) -> usize {
        self.stolen_instructions
    }

    /// The plan as a [`Recipe`] another process can hook the same bytes with, when it has one.
    pub fn recipe(&self) -> Option<&Recipe> {
        self.recipe.as_ref()
    }

    /// Whether the trampoline was built from a recipe, without decoding.
    pub fn from_recipe(&self) -> bool {
        self.from_recipe
    }

    /// Whether the jump is currently written.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
}
