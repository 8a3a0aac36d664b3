//! Turning a source's allocation map into region-aligned pieces of a fetch.

use rehydrate_driver::Geometry;

use super::io::Segment;

/// One run of a source's block status answer (NBD `base:allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Bytes in the run.
    pub len: u64,
    /// The run reads as zeros.
    pub zero: bool,
}

/// Cuts the fetch `[offset, offset+len)` into pieces at region boundaries: a region is a
/// zero piece only when the allocation map says every byte of it reads as zeros; any
/// other region is data. Runs past the fetch are ignored; a map that stops short leaves
/// the rest as data (always safe). Adjacent pieces of one kind are merged.
pub fn plan_segments(
    geometry: &Geometry,
    offset: u64,
    len: u64,
    map: &[Allocation],
) -> Vec<Segment> {
    let end = offset.saturating_add(len).min(geometry.volume_size_bytes());
    let mut out: Vec<Segment> = Vec::new();
    if offset >= end {
        return out;
    }
    // Zero byte ranges from the map, clipped to the fetch.
    let mut zeros: Vec<(u64, u64)> = Vec::new();
    let mut at = offset;
    for run in map {
        if at >= end {
            break;
        }
        let run_end = at.saturating_add(run.len).min(end);
        if run.zero && run_end > at {
            match zeros.last_mut() {
                Some(last) if last.1 == at => last.1 = run_end,
                _ => zeros.push((at, run_end)),
            }
        }
        at = run_end;
    }
    let regions = geometry.regions_touched(offset, end - offset);
    let mut z = 0;
    for region in regions {
        let bytes = geometry.regions_byte_range(region..region + 1);
        while z < zeros.len() && zeros[z].1 <= bytes.start {
            z += 1;
        }
        let zero = zeros
            .get(z)
            .is_some_and(|&(s, e)| s <= bytes.start && e >= bytes.end);
        let start = bytes.start.max(offset);
        let piece_end = bytes.end.min(end);
        match out.last_mut() {
            Some(last) if last.zero == zero && last.offset + last.len == start => {
                last.len += piece_end - start
            }
            _ => out.push(Segment {
                offset: start,
                len: piece_end - start,
                zero,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Geometry {
        Geometry::new(16 * 4096 + 512, 4096).unwrap()
    }

    #[test]
    fn only_wholly_zero_regions_are_zero() {
        let map = [
            Allocation {
                len: 4096 + 512,
                zero: true,
            },
            Allocation {
                len: 3 * 4096 - 512,
                zero: false,
            },
            Allocation {
                len: 100 * 4096,
                zero: true,
            },
        ];
        let s = plan_segments(&g(), 0, 8 * 4096, &map);
        assert_eq!(
            s,
            vec![
                Segment {
                    offset: 0,
                    len: 4096,
                    zero: true
                },
                Segment {
                    offset: 4096,
                    len: 3 * 4096,
                    zero: false
                },
                Segment {
                    offset: 4 * 4096,
                    len: 4 * 4096,
                    zero: true
                },
            ]
        );
    }

    #[test]
    fn a_short_map_leaves_data_and_the_partial_last_region_counts() {
        let s = plan_segments(
            &g(),
            15 * 4096,
            4096 + 512,
            &[Allocation {
                len: 4096,
                zero: true,
            }],
        );
        assert_eq!(
            s,
            vec![
                Segment {
                    offset: 15 * 4096,
                    len: 4096,
                    zero: true
                },
                Segment {
                    offset: 16 * 4096,
                    len: 512,
                    zero: false
                },
            ]
        );
        let s = plan_segments(
            &g(),
            16 * 4096,
            512,
            &[Allocation {
                len: 512,
                zero: true,
            }],
        );
        assert_eq!(
            s,
            vec![Segment {
                offset: 16 * 4096,
                len: 512,
                zero: true
            }]
        );
    }
}
