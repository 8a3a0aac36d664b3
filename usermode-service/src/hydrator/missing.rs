//! Turning the driver's two ways of saying "missing" into hydrator inputs.

use rehydrate_driver::abi::{MissingFlags, MissingRange};
use rehydrate_driver::engine::Action;
use rehydrate_driver::{Geometry, RangeError};

use super::io::{Input, Missing};

impl Missing {
    /// From an ABI entry (the Windows driver's `GET_MISSING` answer). A range the volume
    /// does not hold is an error the shell answers with a `FetchFailed` of
    /// `FailReason::OutOfRange`. A read or a partial write waiting is on demand; a range
    /// flagged only `BACKGROUND` is a hint.
    pub fn from_abi(range: &MissingRange, geometry: &Geometry) -> Result<Missing, RangeError> {
        geometry.check(range.offset, range.len)?;
        let waiting = MissingFlags::ON_DEMAND | MissingFlags::WRITE_PARTIAL;
        Ok(Missing {
            regions: geometry.regions_touched(range.offset, range.len),
            on_demand: range.flags.intersects(waiting)
                || !range.flags.contains(MissingFlags::BACKGROUND),
        })
    }

    /// From the in-process engine's `Action::Fetch` (the simulator and the Linux restore);
    /// `None` for any other action.
    pub fn from_engine(action: &Action) -> Option<Missing> {
        match action {
            Action::Fetch { regions, on_demand } => Some(Missing {
                regions: regions.clone(),
                on_demand: *on_demand,
            }),
            _ => None,
        }
    }

    /// The hydrator input for it.
    pub fn input(&self) -> Input<'static> {
        Input::Missing {
            regions: self.regions.clone(),
            on_demand: self.on_demand,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_ranges_become_touched_regions_and_bad_ones_errors() {
        let g = Geometry::new(64 * 4096, 4096).unwrap();
        let m = Missing::from_abi(
            &MissingRange {
                offset: 4096 + 512,
                len: 4096,
                flags: MissingFlags::ON_DEMAND,
            },
            &g,
        )
        .unwrap();
        assert_eq!(
            m,
            Missing {
                regions: 1..3,
                on_demand: true
            }
        );
        let hint = MissingRange {
            offset: 0,
            len: 4096,
            flags: MissingFlags::BACKGROUND,
        };
        assert!(!Missing::from_abi(&hint, &g).unwrap().on_demand);
        let past = MissingRange {
            offset: 64 * 4096,
            len: 4096,
            flags: MissingFlags::ON_DEMAND,
        };
        assert!(Missing::from_abi(&past, &g).is_err());
        let fetch = Action::Fetch {
            regions: 3..9,
            on_demand: true,
        };
        assert_eq!(
            Missing::from_engine(&fetch),
            Some(Missing {
                regions: 3..9,
                on_demand: true
            })
        );
        assert_eq!(Missing::from_engine(&Action::AllRestored), None);
    }
}
