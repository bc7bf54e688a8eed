//! vCPUs and memory with hotplug headroom (issue 14, resize): the checks on a spec's
//! `max_vcpus`/`max_memory` and on a requested change (`hv set`). Pure.
//!
//! A VM with `max_vcpus` starts with `-smp vcpus,maxcpus=max_vcpus` and can get vCPUs hot-plugged
//! up to the maximum. A VM with `max_memory` starts with `-m max_memory`, a virtio balloon and
//! the balloon inflated down to `memory`; a live memory change moves the balloon between
//! 16 MiB and the maximum.

use crate::size::Size;
use crate::spec::{SpecError, VmSpec, MAX_MEMORY, MAX_VCPUS, MIN_MEMORY};

/// The vCPU maximum of a spec (`max_vcpus`, else `vcpus`).
pub fn max_vcpus(spec: &VmSpec) -> u32 {
    spec.max_vcpus.unwrap_or(spec.vcpus)
}

/// The memory maximum of a spec (`max_memory`, else `memory`).
pub fn max_memory(spec: &VmSpec) -> Size {
    spec.max_memory.unwrap_or(spec.memory)
}

/// Checks `max_vcpus` and `max_memory` against the rest of the spec.
pub(crate) fn validate(spec: &VmSpec) -> Result<(), SpecError> {
    if let Some(m) = spec.max_vcpus {
        if m == 0 || m > MAX_VCPUS {
            return Err(SpecError::new(
                "max_vcpus",
                format!("{m} vCPUs is out of range; use 1 to {MAX_VCPUS}"),
            ));
        }
        if m < spec.vcpus {
            return Err(SpecError::new(
                "max_vcpus",
                format!(
                    "{m} is below the {} vCPUs the VM has; raise --max-vcpus or lower --vcpus",
                    spec.vcpus
                ),
            ));
        }
    }
    if let Some(m) = spec.max_memory {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&m.0) || !m.0.is_multiple_of(1 << 20) {
            return Err(SpecError::new(
                "max_memory",
                format!("{m} is out of range or not a whole number of MiB; use 16M to 4T"),
            ));
        }
        if m < spec.memory {
            return Err(SpecError::new(
                "max_memory",
                format!(
                    "{m} is below the {} of memory the VM has; raise --max-memory or lower --memory",
                    spec.memory
                ),
            ));
        }
    }
    Ok(())
}

/// A requested change of vCPUs and/or memory, checked against the limits of `spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resize {
    pub vcpus: Option<u32>,
    pub memory: Option<Size>,
}

impl Resize {
    /// Checks the request against `spec` (the definition whose maxima bound a live change):
    /// something to change, at least 1 vCPU and 16 MiB, at most the maxima.
    pub fn check(&self, spec: &VmSpec) -> Result<(), SpecError> {
        if self.vcpus.is_none() && self.memory.is_none() {
            return Err(SpecError::new(
                "resize",
                "nothing to change; give --vcpus N and/or --memory SIZE",
            ));
        }
        if let Some(n) = self.vcpus {
            if n == 0 {
                return Err(SpecError::new("vcpus", "a VM needs at least 1 vCPU"));
            }
            let max = max_vcpus(spec);
            if n > max {
                return Err(SpecError::new(
                    "vcpus",
                    format!(
                        "{n} vCPUs is above the VM's maximum of {max}; raise max_vcpus \
                         with `hv edit {}` (applies at the next start)",
                        spec.name
                    ),
                ));
            }
        }
        if let Some(m) = self.memory {
            if m.0 < MIN_MEMORY || !m.0.is_multiple_of(1 << 20) {
                return Err(SpecError::new(
                    "memory",
                    format!("{m} is below 16M or not a whole number of MiB"),
                ));
            }
            let max = max_memory(spec);
            if m > max {
                return Err(SpecError::new(
                    "memory",
                    format!(
                        "{m} is above the VM's maximum of {max}; raise max_memory \
                         with `hv edit {}` (applies at the next start)",
                        spec.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `spec` with the change applied (the caller validates the result).
    pub fn apply(&self, spec: &VmSpec) -> VmSpec {
        let mut s = spec.clone();
        if let Some(n) = self.vcpus {
            s.vcpus = n;
        }
        if let Some(m) = self.memory {
            s.memory = m;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vcpus: u32, max: Option<u32>, mem: u64, max_mem: Option<u64>) -> VmSpec {
        let mut s = VmSpec::new("r".parse().unwrap());
        s.vcpus = vcpus;
        s.max_vcpus = max;
        s.memory = Size(mem << 20);
        s.max_memory = max_mem.map(|m| Size(m << 20));
        s
    }

    fn check(s: &VmSpec, r: Resize) -> Result<(), String> {
        r.check(s)
            .map_err(|e| format!("{}: {}", e.field, e.message))
    }

    #[test]
    fn maxima_below_the_current_values_are_refused() {
        assert!(spec(2, Some(4), 256, Some(512)).validate().is_ok());
        assert!(spec(2, None, 256, None).validate().is_ok());
        let e = spec(2, Some(1), 256, None).validate().unwrap_err();
        assert_eq!(e.field, "max_vcpus");
        assert!(e.message.contains("--max-vcpus"), "{}", e.message);
        let e = spec(1, None, 256, Some(128)).validate().unwrap_err();
        assert_eq!(e.field, "max_memory");
        assert!(spec(1, Some(0), 256, None).validate().is_err());
        assert!(spec(1, Some(1000), 256, None).validate().is_err());
        let mut s = spec(1, None, 256, None);
        s.max_memory = Some(Size((512 << 20) + 1));
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_change_stays_within_1_and_the_maxima() {
        let s = spec(1, Some(2), 256, Some(512));
        assert!(check(
            &s,
            Resize {
                vcpus: Some(2),
                memory: Some(Size(384 << 20))
            }
        )
        .is_ok());
        let e = check(
            &s,
            Resize {
                vcpus: Some(3),
                memory: None,
            },
        )
        .unwrap_err();
        assert!(e.contains("maximum of 2") && e.contains("max_vcpus"), "{e}");
        let e = check(
            &s,
            Resize {
                vcpus: Some(0),
                memory: None,
            },
        )
        .unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = check(
            &s,
            Resize {
                vcpus: None,
                memory: Some(Size(1 << 30)),
            },
        )
        .unwrap_err();
        assert!(
            e.contains("maximum of 512M") && e.contains("max_memory"),
            "{e}"
        );
        let e = check(
            &s,
            Resize {
                vcpus: None,
                memory: Some(Size(8 << 20)),
            },
        )
        .unwrap_err();
        assert!(e.contains("16M"), "{e}");
        let e = check(&s, Resize::default()).unwrap_err();
        assert!(e.contains("nothing to change"), "{e}");
        // Without headroom the maximum is the current value.
        let e = check(
            &spec(1, None, 256, None),
            Resize {
                vcpus: Some(2),
                memory: None,
            },
        );
        assert!(e.unwrap_err().contains("maximum of 1"));
    }

    #[test]
    fn apply_changes_only_what_was_asked() {
        let s = spec(1, Some(2), 256, Some(512));
        let t = Resize {
            vcpus: Some(2),
            memory: None,
        }
        .apply(&s);
        assert_eq!(
            (t.vcpus, t.memory, t.max_vcpus),
            (2, Size(256 << 20), Some(2))
        );
    }
}
