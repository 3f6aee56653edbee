//! Background tasks that died: the data plane's batch schedulers, the control
//! plane's reload and clock tasks. A panic in one of them must not be silent:
//! whoever supervises the task records it here, and `/ready`, the metrics and
//! the control API read it. Process-wide, because a task that died is a fact
//! about the process, not about one routing snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// One background task that ended by panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPanic {
    /// The task's name, e.g. `config-reload` or `batch mlp:1@local`.
    pub task: String,
    /// The panic's message, when it carried one.
    pub message: String,
}

static ANY: AtomicBool = AtomicBool::new(false);
static PANICS: Mutex<Vec<TaskPanic>> = Mutex::new(Vec::new());

/// Records that `task` panicked with `message`.
pub fn record_panic(task: impl Into<String>, message: impl Into<String>) {
    let p = TaskPanic { task: task.into(), message: message.into() };
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    ANY.store(true, Ordering::Release);
}

/// Whether any background task has panicked since the process started (one atomic load).
pub fn any_panicked() -> bool {
    ANY.load(Ordering::Acquire)
}

/// Every recorded panic, oldest first.
pub fn panicked() -> Vec<TaskPanic> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The message of a caught panic payload (`&str` or `String`; anything else is unnamed).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_panic_is_visible() {
        let payload = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        record_panic("test-task", panic_message(payload.as_ref()));
        assert!(any_panicked());
        assert!(panicked().iter().any(|p| p.task == "test-task" && p.message == "boom 7"));
    }
}
