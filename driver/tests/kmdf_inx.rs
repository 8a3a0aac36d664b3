//! The driver's INX (`driver/kmdf/rehydrate_kmdf.inx`), read as Windows setup reads it:
//! sections, directives and registry lines. Installing must append the filter to the
//! Volume class's UpperFilters; uninstalling must remove only that string, never the
//! whole value (which would take volsnap and every other volume filter with it).

use std::collections::BTreeMap;

/// The Volume setup class (devguid.h `GUID_DEVCLASS_VOLUME`).
const VOLUME_CLASS_GUID: &str = "{71A27CDD-812A-11D0-BEC7-08002BE2092F}";
/// `FLG_ADDREG_TYPE_MULTI_SZ | FLG_ADDREG_APPEND` (setupapi.h).
const FLG_ADDREG_MULTI_SZ_APPEND: u32 = 0x0001_0008;
/// `FLG_DELREG_MULTI_SZ_DELSTRING` (setupapi.h): delete one string of a REG_MULTI_SZ.
const FLG_DELREG_MULTI_SZ_DELSTRING: u32 = 0x0001_8002;
/// `SERVICE_BOOT_START`.
const SERVICE_BOOT_START: u32 = 0;
/// `SERVICE_KERNEL_DRIVER`.
const SERVICE_KERNEL_DRIVER: u32 = 1;

/// Sections by name (case kept, compared case-insensitively), each a list of lines with
/// comments and surrounding blanks removed.
struct Inf {
    sections: BTreeMap<String, Vec<String>>,
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

impl Inf {
    fn parse(text: &str) -> Inf {
        let mut sections = BTreeMap::new();
        let mut current: Option<String> = None;
        for raw in text.lines() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim().to_ascii_lowercase();
                sections.entry(name.clone()).or_insert_with(Vec::new);
                current = Some(name);
                continue;
            }
            let section = current.as_ref().expect("a line before the first section");
            sections.get_mut(section).unwrap().push(line.to_string());
        }
        Inf { sections }
    }

    fn section(&self, name: &str) -> &[String] {
        self.sections
            .get(&name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("the INX has no [{name}] section"))
    }

    /// `KEY = VALUE` of a section (the first), value unquoted.
    fn directive(&self, section: &str, key: &str) -> String {
        self.section(section)
            .iter()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("[{section}] has no {key}"))
    }

    /// The registry lines of the sections a directive names (`AddReg = A, B`).
    fn reg_lines(&self, section: &str, key: &str) -> Vec<RegLine> {
        self.directive(section, key)
            .split(',')
            .flat_map(|name| self.section(name.trim()).iter().map(|l| RegLine::parse(l)))
            .collect()
    }
}

/// `root, subkey, value-name, flags, value` of an AddReg/DelReg section.
#[derive(Debug)]
struct RegLine {
    root: String,
    subkey: String,
    value_name: String,
    flags: u32,
    value: String,
}

impl RegLine {
    fn parse(line: &str) -> RegLine {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        assert!(
            fields.len() >= 4,
            "registry line with too few fields: {line}"
        );
        let flags = fields[3];
        let flags = flags
            .strip_prefix("0x")
            .map(|hex| u32::from_str_radix(hex, 16))
            .unwrap_or_else(|| flags.parse())
            .unwrap_or_else(|e| panic!("flags {flags:?} of {line}: {e}"));
        RegLine {
            root: fields[0].to_string(),
            subkey: fields[1].to_string(),
            value_name: fields[2].to_string(),
            flags,
            value: fields
                .get(4)
                .map_or("", |v| v.trim_matches('"'))
                .to_string(),
        }
    }

    fn is_volume_upper_filters(&self) -> bool {
        self.root.eq_ignore_ascii_case("HKLM")
            && self.subkey.eq_ignore_ascii_case(&format!(
                "System\\CurrentControlSet\\Control\\Class\\{VOLUME_CLASS_GUID}"
            ))
            && self.value_name.eq_ignore_ascii_case("UpperFilters")
    }
}

fn inx() -> Inf {
    Inf::parse(include_str!("../kmdf/rehydrate_kmdf.inx"))
}

const INSTALL: &str = "DefaultInstall.NT$ARCH$";
const UNINSTALL: &str = "DefaultUninstall.NT$ARCH$";

#[test]
fn the_inx_installs_into_the_volume_class() {
    let inf = inx();
    assert_eq!(inf.directive("Version", "Class"), "Volume");
    assert_eq!(inf.directive("Version", "ClassGuid"), VOLUME_CLASS_GUID);
}

/// The registry lines of `section`'s `key` directive, and the one among them that names
/// the Volume class's UpperFilters (there must be exactly one).
fn upper_filters_line(inf: &Inf, section: &str, key: &str) -> (Vec<RegLine>, RegLine) {
    let mut lines = inf.reg_lines(section, key);
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].is_volume_upper_filters())
        .collect();
    assert_eq!(
        at.len(),
        1,
        "[{section}] {key} must name the Volume class's UpperFilters once: {lines:?}"
    );
    let line = lines.remove(at[0]);
    (lines, line)
}

#[test]
fn install_appends_the_filter_to_the_volume_class_upper_filters() {
    let (_, filters) = upper_filters_line(&inx(), INSTALL, "AddReg");
    assert_eq!(
        filters.flags, FLG_ADDREG_MULTI_SZ_APPEND,
        "UpperFilters must be appended to as a REG_MULTI_SZ, keeping volsnap and the others"
    );
    assert_eq!(filters.value, "Rehydrate");
}

#[test]
fn uninstall_removes_only_its_own_string_from_upper_filters() {
    let (others, filters) = upper_filters_line(&inx(), UNINSTALL, "DelReg");
    assert_eq!(
        filters.flags, FLG_DELREG_MULTI_SZ_DELSTRING,
        "DelReg flags {:#010x} delete the whole UpperFilters value (every volume filter: \
         volsnap, fvevol, ...); FLG_DELREG_MULTI_SZ_DELSTRING removes one string",
        filters.flags
    );
    assert_eq!(filters.value, "Rehydrate");
    // Nothing else of the class key is deleted.
    assert!(
        others
            .iter()
            .all(|l| !l.subkey.to_ascii_lowercase().contains("control\\class")),
        "{others:?}"
    );
}

#[test]
fn the_service_is_a_boot_start_kernel_driver_named_in_upper_filters() {
    let inf = inx();
    let add = inf.directive(&format!("{INSTALL}.Services"), "AddService");
    let fields: Vec<_> = add.split(',').map(str::trim).collect();
    assert_eq!(
        fields[0], "Rehydrate",
        "service name is the UpperFilters string"
    );
    let service = fields[2];
    assert_eq!(
        inf.directive(service, "ServiceType")
            .parse::<u32>()
            .unwrap(),
        SERVICE_KERNEL_DRIVER
    );
    // A class filter listed in UpperFilters must load whenever any volume stack is built,
    // the boot volume's included; a listed filter that cannot load fails the volume.
    assert_eq!(
        inf.directive(service, "StartType").parse::<u32>().unwrap(),
        SERVICE_BOOT_START
    );
    assert_eq!(inf.directive(service, "LoadOrderGroup"), "PnP Filter");
    let del = inf.directive(&format!("{UNINSTALL}.Services"), "DelService");
    assert!(del.starts_with("Rehydrate,"), "{del}");
}

#[test]
fn the_parser_reads_flags_and_ignores_comments() {
    let inf = Inf::parse(
        "[A]\nDelReg = B ; comment\n[B]\nHKLM, k, v, 0x00018002, \"x;y\" ; note\n[c]\nK=V\n",
    );
    let lines = inf.reg_lines("a", "DelReg");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].flags, 0x0001_8002);
    assert_eq!(lines[0].value, "x;y");
    assert_eq!(inf.directive("C", "k"), "V");
}
