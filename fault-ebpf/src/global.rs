//! Global data the programs read on every packet: arrays in `.bss.*` sections, which aya
//! loads as array maps of one value each and the daemon writes whole (see the daemon's
//! `global_array`). A word is read at a constant address plus an index, with no helper call:
//! to LLVM a map lookup is a call, which takes the argument registers from it, so a test
//! made of lookups spills and reloads what it holds around each, where reads of words keep
//! everything in registers and need no stack.

use core::arch::asm;
use core::ptr::read_volatile;

/// Element `index` of `array`, which the daemon may be writing: a volatile read. `index`
/// must be below `N` as LLVM sees it (a constant, or masked by [`masked`]).
#[inline(always)]
pub fn element<T: Copy, const N: usize>(array: *const [T; N], index: u32) -> T {
    // SAFETY: `array` is a global of the program, and the index is inside it.
    unsafe { read_volatile(core::ptr::addr_of!((*array)[index as usize])) }
}

/// Element `index` of `array` (`N` a power of two), the index masked to the array: an index
/// made from packet bytes taken through a byte swap is any number to 6.1's verifier, which
/// does not follow byte swaps. LLVM, which knows the index is already inside, would drop the
/// mask, hence [`opaque`] in front of it.
#[inline(always)]
pub fn masked<T: Copy, const N: usize>(array: *const [T; N], index: u32) -> T {
    const { assert!(N.is_power_of_two()) };
    element(array, opaque(index) & (N as u32 - 1))
}

/// `v`, as a number LLVM knows nothing about (an assembly move of a register to itself,
/// which "changes" it), so that a mask the verifier needs is not optimised away. Not an
/// empty block: its line information would share an instruction offset with the next
/// line's, which the kernel refuses.
#[inline(always)]
fn opaque(v: u32) -> u32 {
    let mut v = v as u64;
    // SAFETY: a register moved to itself.
    unsafe { asm!("{v} = {v}", v = inout(reg) v, options(pure, nomem, nostack)) };
    v as u32
}
