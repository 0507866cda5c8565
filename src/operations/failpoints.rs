//! Failpoints: named places in the step runner where a test can make bangerd crash or a step
//! fail, chosen by the `BANGER_FAILPOINT` environment variable.
//!
//! Syntax: a comma-separated list of `KIND:STEP:POINT`, for example
//! `BANGER_FAILPOINT=kernel.import:publish:before`. `KIND` is an operation kind as users see
//! it (`kernel.import`), `STEP` a step name of that kind, and `POINT` one of:
//!
//! | point         | what happens                                                         |
//! |---------------|----------------------------------------------------------------------|
//! | `before`      | abort the process after `StepStarted` is durable, before the effect   |
//! | `after`       | abort after the side effect, before `StepSucceeded`                   |
//! | `succeeded`   | abort after `StepSucceeded` is durable, before the next step          |
//! | `error`       | the step fails with an injected error (the operation rolls back)      |
//! | `undo-before` | abort after `UndoStarted` is durable, before the undo runs            |
//! | `undo-after`  | abort after the undo ran, before `UndoSucceeded` (recovery redoes it) |
//! | `undo-error`  | the undo fails with an injected error (the operation becomes stuck)   |
//!
//! Aborting (`std::process::abort`) is the closest a process gets to a power cut: no
//! destructor runs, nothing is flushed that was not already durable. Production never sets the
//! variable; an unparsable value stops the daemon at start rather than being ignored.

use banger_events::OpKind;

/// Where in a step a failpoint fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Before,
    After,
    Succeeded,
    Error,
    UndoBefore,
    UndoAfter,
    UndoError,
}

impl Point {
    fn parse(text: &str) -> Option<Point> {
        Some(match text {
            "before" => Point::Before,
            "after" => Point::After,
            "succeeded" => Point::Succeeded,
            "error" => Point::Error,
            "undo-before" => Point::UndoBefore,
            "undo-after" => Point::UndoAfter,
            "undo-error" => Point::UndoError,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Point::Before => "before",
            Point::After => "after",
            Point::Succeeded => "succeeded",
            Point::Error => "error",
            Point::UndoBefore => "undo-before",
            Point::UndoAfter => "undo-after",
            Point::UndoError => "undo-error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "BANGER_FAILPOINT entry {entry:?} is not KIND:STEP:POINT with a known kind and POINT one of before, after, succeeded, error, undo-before, undo-after, undo-error"
)]
pub struct FailpointError {
    pub entry: String,
}

/// The failpoints this process was started with.
#[derive(Clone, Debug, Default)]
pub struct Failpoints {
    points: Vec<(OpKind, String, Point)>,
}

impl Failpoints {
    /// No failpoints.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `BANGER_FAILPOINT`.
    pub fn from_env() -> Result<Self, FailpointError> {
        match std::env::var("BANGER_FAILPOINT") {
            Ok(value) => Self::parse(&value),
            Err(_) => Ok(Self::none()),
        }
    }

    pub fn parse(text: &str) -> Result<Self, FailpointError> {
        let mut points = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || FailpointError {
                entry: entry.to_owned(),
            };
            let mut parts = entry.split(':');
            let (Some(kind), Some(step), Some(point), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or_else(bad)?;
            let point = Point::parse(point).ok_or_else(bad)?;
            points.push((kind, step.to_owned(), point));
        }
        Ok(Failpoints { points })
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// True when a failpoint is set at this place.
    pub fn is_set(&self, kind: OpKind, step: &str, point: Point) -> bool {
        self.points
            .iter()
            .any(|(k, s, p)| *k == kind && s == step && *p == point)
    }

    /// Aborts the process when a failpoint is set at this place.
    pub fn crash_if_set(&self, kind: OpKind, step: &str, point: Point) {
        if self.is_set(kind, step, point) {
            tracing::error!(
                failpoint = %format_args!("{kind}:{step}:{}", point.as_str()),
                "failpoint hit: aborting bangerd"
            );
            std::process::abort();
        }
    }

    /// The name of a failpoint, for the injected error's message.
    pub fn name(kind: OpKind, step: &str, point: Point) -> String {
        format!("{kind}:{step}:{}", point.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_refuses_junk() {
        let points = Failpoints::parse(
            "kernel.import:publish:before, image.register:stage:undo-error, vm.stop:shutdown:succeeded, vm.create:network:undo-after",
        )
        .unwrap();
        assert!(points.is_set(OpKind::KernelImport, "publish", Point::Before));
        assert!(points.is_set(OpKind::ImageRegister, "stage", Point::UndoError));
        assert!(points.is_set(OpKind::VmStop, "shutdown", Point::Succeeded));
        assert!(points.is_set(OpKind::VmCreate, "network", Point::UndoAfter));
        assert!(!points.is_set(OpKind::KernelImport, "publish", Point::After));
        assert!(Failpoints::parse("").unwrap().is_empty());
        for bad in [
            "kernel.import:publish",
            "nope:publish:before",
            "kernel.import:publish:sometimes",
            "a:b:c:d",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
    }
}
