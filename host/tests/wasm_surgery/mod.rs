//! Binary surgery on a policy component, for fixtures no toolchain builds: the
//! sandbox's limits on memories and table sizes, tried through the real
//! binaries with a component that breaks them at instantiation.
//!
//! A component is a preamble (`\0asm`, version and layer: 8 bytes) and
//! sections (an id byte, a LEB128 u32 size, the payload). Its core modules are
//! sections of id 1, each payload a whole core module (`\0asm 01 00 00 00` and
//! its own sections). The **main** module is the largest one: the policy's
//! code, memory and function table; the others are the small shims
//! `wit-component` adds. Only the main module changes, and only its memory or
//! table section; every size on the way out is re-encoded (a LEB128 may get
//! longer). Anything unexpected panics with what it found: a fixture that is
//! not what its test thinks would prove nothing.

use std::ops::Range;

const MAGIC: &[u8; 4] = b"\0asm";
/// A component's version and layer (`0x0d 0x00`, `0x01 0x00`).
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
/// A core module's version.
const MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// A component's core module section.
const CORE_MODULE: u8 = 1;
/// Core module sections.
const IMPORT: u8 = 2;
const TABLE: u8 = 4;
const MEMORY: u8 = 5;

/// Import kind of a memory.
const IMPORT_MEMORY: u8 = 0x02;

/// One section: its id and where its payload is.
#[derive(Debug, Clone)]
struct Section {
    id: u8,
    payload: Range<usize>,
}

/// A LEB128 u32 at `*pos`; `*pos` moves past it.
fn read_u32(bytes: &[u8], pos: &mut usize) -> u32 {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes
            .get(*pos)
            .unwrap_or_else(|| panic!("a LEB128 runs past the end at byte {pos}"));
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value)
                .unwrap_or_else(|_| panic!("a LEB128 u32 of {value} before byte {pos}"));
        }
    }
    panic!("a LEB128 u32 longer than 5 bytes before byte {pos}")
}

/// `value` as LEB128, appended to `out`.
fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A section of `id` with `payload`, appended to `out`.
fn write_section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    out.push(id);
    write_u32(
        out,
        u32::try_from(payload.len()).expect("a section over 4 GiB"),
    );
    out.extend_from_slice(payload);
}

/// The sections of `bytes` after its preamble, which must be `\0asm` and
/// `version` (`what` names it in a panic).
fn sections(bytes: &[u8], version: [u8; 4], what: &str) -> Vec<Section> {
    assert!(
        bytes.len() >= 8 && &bytes[..4] == MAGIC && bytes[4..8] == version,
        "{what}: not \\0asm with version {version:02x?} (starts {:02x?})",
        &bytes[..bytes.len().min(8)]
    );
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let id = bytes[pos];
        pos += 1;
        let size = read_u32(bytes, &mut pos) as usize;
        let end = pos + size;
        assert!(
            end <= bytes.len(),
            "{what}: section {id} at byte {pos} of {size} bytes runs past the end ({})",
            bytes.len()
        );
        out.push(Section {
            id,
            payload: pos..end,
        });
        pos = end;
    }
    out
}

/// `bytes` (preamble and `sections`) rebuilt with the payload of section
/// number `index` replaced by `payload`.
fn rebuild(bytes: &[u8], sections: &[Section], index: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = bytes[..8].to_vec();
    for (i, s) in sections.iter().enumerate() {
        let p = if i == index {
            payload
        } else {
            &bytes[s.payload.clone()]
        };
        write_section(&mut out, s.id, p);
    }
    out
}

/// The sections of `component` and which of them is its main (largest) core
/// module.
fn main_module(component: &[u8]) -> (Vec<Section>, usize) {
    let sections = sections(component, COMPONENT_VERSION, "the component");
    let index = sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.id == CORE_MODULE)
        .max_by_key(|(_, s)| s.payload.len())
        .map(|(i, _)| i)
        .expect("the component has no core module section");
    (sections, index)
}

/// `component` with its main core module replaced by `edit(main module)`.
fn edit_main_module(component: &[u8], edit: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let (sections, index) = main_module(component);
    let module = edit(&component[sections[index].payload.clone()]);
    rebuild(component, &sections, index, &module)
}

/// Where a section of `id` goes among a core module's sections: custom
/// sections (0) anywhere; then type 1, import 2, function 3, table 4, memory
/// 5, tag 13, global 6, export 7, start 8, element 9, data count 12, code 10,
/// data 11.
fn order(id: u8) -> usize {
    const ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
    ORDER
        .iter()
        .position(|&o| o == id)
        .unwrap_or_else(|| panic!("unknown core module section {id}"))
}

/// Whether a core module's import section imports a memory.
fn imports_a_memory(module: &[u8], imports: &Section) -> bool {
    let p = &module[imports.payload.clone()];
    let mut pos = 0;
    let name = |pos: &mut usize| {
        let len = read_u32(p, pos) as usize;
        *pos += len;
    };
    for _ in 0..read_u32(p, &mut pos) {
        name(&mut pos);
        name(&mut pos);
        let kind = p[pos];
        pos += 1;
        match kind {
            // func: a type index; tag: an attribute byte and a type index.
            0x00 => {
                read_u32(p, &mut pos);
            }
            0x04 => {
                pos += 1;
                read_u32(p, &mut pos);
            }
            0x01 => {
                pos += reftype_len(p, pos);
                limits(p, &mut pos);
            }
            IMPORT_MEMORY => return true,
            // global: a value type byte and mutability.
            0x03 => {
                assert!(
                    matches!(p[pos], 0x7f | 0x7e | 0x7d | 0x7c | 0x7b | 0x70 | 0x6f),
                    "an imported global of value type {:#04x}",
                    p[pos]
                );
                pos += 2;
            }
            other => panic!("an import of kind {other:#04x}"),
        }
    }
    false
}

/// The length of the reference type at `pos`: `funcref` (0x70) or
/// `externref` (0x6f). The GC proposal's encodings (0x63/0x64 and a heap
/// type) and the table-with-initializer prefix (0x40) are not handled.
fn reftype_len(p: &[u8], pos: usize) -> usize {
    match p[pos] {
        0x70 | 0x6f => 1,
        other => panic!(
            "a table of reference type {other:#04x}: only funcref (0x70) and externref (0x6f) are handled"
        ),
    }
}

/// Skips the limits at `*pos` (flags 0x00: min; 0x01: min, max); returns
/// (min, max).
fn limits(p: &[u8], pos: &mut usize) -> (u32, Option<u32>) {
    let flags = p[*pos];
    *pos += 1;
    let min = read_u32(p, pos);
    match flags {
        0x00 => (min, None),
        0x01 => (min, Some(read_u32(p, pos))),
        other => panic!("limits with flags {other:#04x}: only 32-bit, unshared limits are handled"),
    }
}

/// `module` with one more defined memory (memtype `0x00 0x01`: one page, no
/// maximum) at the end of its memory section, or in a new memory section
/// when it has none (it imports its memory, say).
fn add_memory(module: &[u8]) -> Vec<u8> {
    const MEMTYPE: [u8; 2] = [0x00, 0x01];
    let sections = sections(module, MODULE_VERSION, "the main core module");
    if let Some(index) = sections.iter().position(|s| s.id == MEMORY) {
        let p = &module[sections[index].payload.clone()];
        let mut pos = 0;
        let count = read_u32(p, &mut pos);
        let mut payload = Vec::new();
        write_u32(&mut payload, count + 1);
        payload.extend_from_slice(&p[pos..]);
        payload.extend_from_slice(&MEMTYPE);
        return rebuild(module, &sections, index, &payload);
    }
    let imported = sections
        .iter()
        .find(|s| s.id == IMPORT)
        .is_some_and(|s| imports_a_memory(module, s));
    eprintln!("wasm surgery: the main module defines no memory (imports one: {imported}); adding a memory section");
    let mut payload = Vec::new();
    write_u32(&mut payload, 1);
    payload.extend_from_slice(&MEMTYPE);
    let mut out = module[..8].to_vec();
    let mut placed = false;
    for s in &sections {
        if !placed && s.id != 0 && order(s.id) > order(MEMORY) {
            write_section(&mut out, MEMORY, &payload);
            placed = true;
        }
        write_section(&mut out, s.id, &module[s.payload.clone()]);
    }
    if !placed {
        write_section(&mut out, MEMORY, &payload);
    }
    out
}

/// `module` with its first defined table's limits set to a minimum of `min`
/// elements and no maximum.
fn set_first_table_min(module: &[u8], min: u32) -> Vec<u8> {
    let sections = sections(module, MODULE_VERSION, "the main core module");
    let index = sections
        .iter()
        .position(|s| s.id == TABLE)
        .expect("the main core module defines no table");
    let p = &module[sections[index].payload.clone()];
    let mut pos = 0;
    let count = read_u32(p, &mut pos);
    assert!(count > 0, "the main core module's table section is empty");
    let reftype = pos..pos + reftype_len(p, pos);
    pos = reftype.end;
    let (old_min, old_max) = limits(p, &mut pos);
    eprintln!(
        "wasm surgery: the main module's first table: min {old_min}, max {old_max:?} -> min {min}"
    );
    let mut payload = Vec::new();
    write_u32(&mut payload, count);
    payload.extend_from_slice(&p[reftype]);
    payload.push(0x00);
    write_u32(&mut payload, min);
    payload.extend_from_slice(&p[pos..]);
    rebuild(module, &sections, index, &payload)
}

/// The defined memories of `component`'s main core module, and its first
/// table's limits (to check a fixture).
pub fn main_module_shape(component: &[u8]) -> (u32, Option<(u32, Option<u32>)>) {
    let (top, index) = main_module(component);
    let module = &component[top[index].payload.clone()];
    let mut shape = (0, None);
    for s in sections(module, MODULE_VERSION, "the main core module") {
        let p = &module[s.payload.clone()];
        let mut pos = 0;
        match s.id {
            MEMORY => shape.0 = read_u32(p, &mut pos),
            TABLE if read_u32(p, &mut pos) > 0 => {
                pos += reftype_len(p, pos);
                shape.1 = Some(limits(p, &mut pos));
            }
            _ => {}
        }
    }
    shape
}

/// `component` whose main core module defines one more memory.
pub fn with_second_memory(component: &[u8]) -> Vec<u8> {
    edit_main_module(component, add_memory)
}

/// `component` whose main core module's first table starts at `min`
/// elements.
pub fn with_table_min(component: &[u8], min: u32) -> Vec<u8> {
    edit_main_module(component, |m| set_first_table_min(m, min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leb(v: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write_u32(&mut out, v);
        out
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0, 1, 127, 128, 200_000, u32::MAX] {
            let bytes = leb(v);
            let mut pos = 0;
            assert_eq!(read_u32(&bytes, &mut pos), v);
            assert_eq!(pos, bytes.len());
        }
        assert_eq!(leb(200_000), [0xc0, 0x9a, 0x0c]);
    }

    /// A component of one core module, `module`.
    fn component_of(module: &[u8]) -> Vec<u8> {
        let mut c = MAGIC.to_vec();
        c.extend_from_slice(&COMPONENT_VERSION);
        write_section(&mut c, CORE_MODULE, module);
        c
    }

    fn module_of(sections: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&MODULE_VERSION);
        for (id, p) in sections {
            write_section(&mut m, *id, p);
        }
        m
    }

    #[test]
    fn an_imported_memory_gets_a_memory_section_in_its_place() {
        // (import "m" "m" (memory 1)) (table 1 funcref) (global i32 (i32.const 0))
        let import: &[u8] = &[0x01, 0x01, b'm', 0x01, b'm', 0x02, 0x00, 0x01];
        let table = table_of(1, Some(1));
        let global: &[u8] = &[0x01, 0x7f, 0x00, 0x41, 0x00, 0x0b];
        let module = module_of(&[(IMPORT, import), (TABLE, &table), (6, global)]);
        let component = with_second_memory(&component_of(&module));
        assert_eq!(main_module_shape(&component), (1, Some((1, Some(1)))));
        let want = module_of(&[
            (IMPORT, import),
            (TABLE, &table),
            (MEMORY, &[0x01, 0x00, 0x01]),
            (6, global),
        ]);
        assert_eq!(component, component_of(&want));
    }

    fn table_of(min: u32, max: Option<u32>) -> Vec<u8> {
        let mut t = vec![0x01, 0x70, u8::from(max.is_some())];
        t.extend(leb(min));
        if let Some(max) = max {
            t.extend(leb(max));
        }
        t
    }

    #[test]
    fn a_table_minimum_is_reencoded_and_its_maximum_dropped() {
        let memory: &[u8] = &[0x01, 0x00, 0x11];
        let module = module_of(&[(TABLE, &table_of(116, Some(116))), (MEMORY, memory)]);
        let component = with_table_min(&component_of(&module), 200_000);
        assert_eq!(main_module_shape(&component), (1, Some((200_000, None))));
        let component = with_second_memory(&component);
        assert_eq!(main_module_shape(&component), (2, Some((200_000, None))));
    }
}
