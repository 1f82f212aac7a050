//! The only file that knows `PyO3`: the `collector._core` module.
use crate::error::CoreError;
use crate::session::Closed;
use crate::sessionizer::{self, Output, Request};
use crate::settings::Settings;
use crate::{codec, privacy, useragent};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyList};

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// A closed session (or, from `live()`, an open one) ready to store.
#[pyclass(frozen, module = "collector._core")]
pub struct ClosedSession {
    #[pyo3(get)]
    session_id: String,
    #[pyo3(get)]
    app: String,
    #[pyo3(get)]
    user_tag: Option<String>,
    #[pyo3(get)]
    start_ms: i64,
    #[pyo3(get)]
    end_ms: i64,
    #[pyo3(get)]
    end_reason: Option<&'static str>,
    #[pyo3(get)]
    summary: Py<PyBytes>,
    #[pyo3(get)]
    detail: Py<PyBytes>,
}

#[pymethods]
impl ClosedSession {
    fn __repr__(&self) -> String {
        format!("ClosedSession({:?}, app={:?}, end_reason={})", self.session_id, self.app, self.end_reason.map_or("None".into(), |r| format!("{r:?}")))
    }
}

fn closed_to_py(py: Python<'_>, c: Closed) -> PyResult<Py<ClosedSession>> {
    Py::new(
        py,
        ClosedSession {
            session_id: c.session_id,
            app: c.app,
            user_tag: c.user_tag,
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            end_reason: c.end_reason.map(super::session::EndReason::as_str),
            summary: PyBytes::new(py, &c.summary).unbind(),
            detail: PyBytes::new(py, &c.detail).unbind(),
        },
    )
}

/// What one `ingest` or `flush` produced.
#[pyclass(frozen, module = "collector._core")]
pub struct IngestResult {
    #[pyo3(get)]
    closed: Py<PyList>,
    #[pyo3(get)]
    rejected: Py<PyList>,
    #[pyo3(get)]
    beacons: u64,
    #[pyo3(get)]
    events: u64,
    #[pyo3(get)]
    dropped: Py<PyDict>,
    #[pyo3(get)]
    actions: Py<PyList>,
    #[pyo3(get)]
    errors: Py<PyList>,
    #[pyo3(get)]
    vitals: Py<PyList>,
    /// More sessions are due than one call closes (`max_closed_per_call`): flush again.
    #[pyo3(get)]
    more_due: bool,
}

fn output_to_py(py: Python<'_>, out: Output) -> PyResult<IngestResult> {
    let closed = PyList::empty(py);
    for c in out.closed {
        closed.append(closed_to_py(py, c)?)?;
    }
    let dropped = PyDict::new(py);
    for (k, v) in out.dropped {
        dropped.set_item(k, v)?;
    }
    let m = out.metrics;
    Ok(IngestResult {
        closed: closed.unbind(),
        rejected: PyList::new(py, out.rejected)?.unbind(),
        beacons: out.beacons,
        events: out.events,
        dropped: dropped.unbind(),
        actions: PyList::new(py, m.actions.into_iter().map(|((app, t, a), n)| (app, t, a, n)))?.unbind(),
        errors: PyList::new(py, m.errors.into_iter().map(|((app, k), n)| (app, k, n)))?.unbind(),
        vitals: PyList::new(py, m.vitals)?.unbind(),
        more_due: out.more_due,
    })
}

fn settings_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Settings> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Settings::default()) };
    let py = obj.py();
    let dataclasses = py.import("dataclasses")?;
    let mapping = if dataclasses.call_method1("is_dataclass", (obj,))?.is_truthy()? {
        dataclasses.call_method1("asdict", (obj,))?
    } else if obj.is_instance_of::<PyDict>() {
        obj.clone()
    } else {
        return Err(PyValueError::new_err("settings must be a dict or a dataclass instance"));
    };
    let text: String = py
        .import("json")?
        .call_method1("dumps", (mapping,))
        .map_err(|e| PyValueError::new_err(format!("invalid settings: {e}")))?
        .extract()?;
    Ok(Settings::from_json(&text)?)
}

/// Open sessions in memory; the clock is always a parameter (epoch ms).
#[pyclass(module = "collector._core")]
pub struct Sessionizer {
    inner: sessionizer::Sessionizer,
}

#[pymethods]
impl Sessionizer {
    #[new]
    #[pyo3(signature = (settings=None))]
    fn new(settings: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Sessionizer { inner: sessionizer::Sessionizer::new(settings_from_py(settings)?)? })
    }

    /// Applies a batch of framed WAL records, then closes what is due at `now_ms`.
    fn ingest(&mut self, py: Python<'_>, batch: &[u8], now_ms: i64) -> PyResult<IngestResult> {
        let inner = &mut self.inner;
        let out = py.detach(|| inner.ingest(batch, now_ms));
        output_to_py(py, out)
    }

    /// Closes the sessions due at `now_ms`, the earliest due first, at most
    /// `max_closed_per_call` of them (`more_due` says whether more are).
    fn flush(&mut self, py: Python<'_>, now_ms: i64) -> PyResult<IngestResult> {
        let inner = &mut self.inner;
        let out = py.detach(|| inner.flush(now_ms));
        output_to_py(py, out)
    }

    /// Open sessions changed since the last call (summary, `live: true`); with `details`,
    /// also their details and those changed since the last call with details (else the
    /// detail is empty).
    #[pyo3(signature = (details=true))]
    fn live(&mut self, py: Python<'_>, details: bool) -> PyResult<Py<PyList>> {
        let inner = &mut self.inner;
        let sessions = py.detach(|| inner.live(details));
        let list = PyList::empty(py);
        for c in sessions {
            list.append(closed_to_py(py, c)?)?;
        }
        Ok(list.unbind())
    }

    fn checkpoint<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let inner = &self.inner;
        let state = py.detach(|| inner.checkpoint());
        PyBytes::new(py, &state)
    }

    fn restore(&mut self, py: Python<'_>, state: &[u8]) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.restore(state))?;
        Ok(())
    }

    fn open_count(&self) -> usize {
        self.inner.open_count()
    }
}

/// Validates requests for the WAL: (wal value, verdict per request, accepted events).
#[pyfunction]
#[pyo3(signature = (requests, max_events=500, mask_ip=true))]
#[allow(clippy::type_complexity)]
fn prepare(
    py: Python<'_>,
    requests: Vec<(u64, PyBackedStr, PyBackedStr, u8, PyBackedBytes)>,
    max_events: usize,
    mask_ip: bool,
) -> (Bound<'_, PyBytes>, Vec<Option<(&'static str, &'static str)>>, u64) {
    let reqs: Vec<Request> = requests
        .iter()
        .map(|(recv_ms, ip, ua, flags, body)| Request { recv_ms: *recv_ms, ip, user_agent: ua, flags: *flags, body })
        .collect();
    let p = py.detach(|| sessionizer::prepare(&reqs, max_events, mask_ip));
    let verdicts = p.verdicts.into_iter().map(|v| v.map(|r| (r.code(), r.message()))).collect();
    (PyBytes::new(py, &p.wal), verdicts, p.events)
}

#[pyfunction]
#[pyo3(name = "mask_ip")]
fn mask_ip_py(ip: &str) -> Option<String> {
    privacy::mask_ip(ip)
}

#[pyfunction]
fn parse_user_agent<'py>(py: Python<'py>, ua: &str) -> PyResult<Bound<'py, PyDict>> {
    let u = py.detach(|| useragent::parse(ua));
    let d = PyDict::new(py);
    let software = |s: &useragent::Software| -> PyResult<Bound<'py, PyDict>> {
        let x = PyDict::new(py);
        x.set_item("family", &s.family)?;
        x.set_item("version", &s.version)?;
        Ok(x)
    };
    d.set_item("browser", software(&u.browser)?)?;
    d.set_item("os", software(&u.os)?)?;
    d.set_item("device_type", u.device_type)?;
    d.set_item("robot", u.robot)?;
    Ok(d)
}

/// The stored form of a session's detail JSON (LZ4 behind a tag byte; see `codec.rs`).
#[pyfunction]
fn pack_detail<'py>(py: Python<'py>, detail: &[u8]) -> Bound<'py, PyBytes> {
    let stored = py.detach(|| codec::pack(detail));
    PyBytes::new(py, &stored)
}

/// The detail JSON of a stored value of either form; `ValueError` when it is damaged.
#[pyfunction]
fn unpack_detail<'py>(py: Python<'py>, stored: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    match py.detach(|| codec::unpack(stored)) {
        Ok(json) => Ok(PyBytes::new(py, &json)),
        Err(e) => Err(PyValueError::new_err(e.message())),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Sessionizer>()?;
    m.add_class::<IngestResult>()?;
    m.add_class::<ClosedSession>()?;
    m.add_function(wrap_pyfunction!(prepare, m)?)?;
    m.add_function(wrap_pyfunction!(mask_ip_py, m)?)?;
    m.add_function(wrap_pyfunction!(parse_user_agent, m)?)?;
    m.add_function(wrap_pyfunction!(pack_detail, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_detail, m)?)?;
    Ok(())
}
