//! The dashboard in real Chromium over real HTTP: live progress without a reload, and
//! control of a running process from the job's page.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use baton_server::{AuthConfig, Role, ServerOptions};
use common::chromium::Browser;
use common::{harness, harness_with, serve, token};
use serde_json::json;

/// The state letter of a process in `/proc/PID/stat` (`T` when stopped).
fn proc_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.trim_start().chars().next().unwrap()
}

/// Clicks the button of `action` in the page.
fn click(action: &str) -> String {
    format!("(document.querySelector('[data-action=\"{action}\"]').click(), '1')")
}

const ENABLED: &str = "JSON.stringify([...document.querySelectorAll('#controls button')].filter(b => !b.disabled).map(b => b.dataset.action))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_the_submit_form_moves_live_and_is_paused_resumed_and_stopped() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "looper", "id": "spinner"})).unwrap())
        .await
        .unwrap();
    h.wait_state("spinner", "running").await;
    let (status, _) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "id": "broken", "command": ["sh", "-c", "exit 7"], "max_attempts": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    h.wait_state("broken", "failed").await;

    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    let base = format!("http://127.0.0.1:{}", addr.port());

    // The overview: counters, the running job with its bar moving, the failure.
    browser.open(&format!("{base}/")).await;
    browser.wait_live().await;
    let bar = "Number(document.querySelector('#running tr[data-job=\"spinner\"] [role=progressbar]')?.getAttribute('aria-valuenow'))";
    let first = browser.wait_for("progress", bar).await;
    browser
        .wait_for(
            "the bar moving without a reload",
            &format!("{bar} !== {first}"),
        )
        .await;
    browser
        .wait_for(
            "the failure",
            "document.querySelector('#failures')?.textContent.includes('exit_code')",
        )
        .await;
    let counts = browser
        .evaluate("JSON.stringify([document.querySelector('[data-count=running]').textContent, document.querySelector('[data-count=failed]').textContent])")
        .await;
    assert_eq!(counts, json!(["1", "1"]));
    let chart = browser
        .wait_for(
            "the chart",
            "document.querySelector('#throughput .failed')?.getAttribute('points')",
        )
        .await;
    assert_eq!(
        chart.as_str().unwrap().split(' ').count(),
        900,
        "a point a second for 15 minutes"
    );
    browser.screenshot("overview").await;

    // A job started from the submit form; its page opens.
    browser.evaluate("(location.hash = '#/submit', '1')").await;
    browser
        .wait_for(
            "the submit form",
            "document.getElementById('submit-form') !== null",
        )
        .await;
    let script = "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo \"::progress $((i/6))% page $i\"; echo line $i; sleep 0.1; done";
    browser
        .evaluate(&format!(
            "(() => {{ const f = document.getElementById('submit-form'); f.command.value = {}; f.labels.value = 'source=dashboard'; f.requestSubmit(); return '1'; }})()",
            serde_json::to_string(script).unwrap()
        ))
        .await;
    let opened = browser
        .wait_for(
            "the new job's page",
            "location.hash.startsWith('#/jobs/') && location.hash",
        )
        .await;
    let id = opened
        .as_str()
        .unwrap()
        .trim_start_matches("#/jobs/")
        .to_owned();
    let job = h.engine.get(&id).await.unwrap();
    assert_eq!(job.runs.command, Some(vec![script.to_owned()]));
    assert_eq!(job.runs.shell, Some(true));
    assert_eq!(job.labels["source"], "dashboard");

    // Its page: the bar moves, logs stream, the controls follow the state machine.
    browser
        .wait_for(
            "the job running",
            "document.querySelector('#job-state [data-state=running]') !== null",
        )
        .await;
    let bar = "Number(document.getElementById('job-progress').getAttribute('aria-valuenow'))";
    let first = browser.wait_for("progress on the job's page", bar).await;
    browser
        .wait_for("the job's bar moving", &format!("{bar} > {first}"))
        .await;
    browser
        .wait_for(
            "log lines streaming",
            "document.getElementById('job-log').textContent.includes('line ')",
        )
        .await;
    assert_eq!(
        browser.evaluate(ENABLED).await,
        json!(["pause", "stop", "stop?force=true", "cancel"])
    );
    browser.screenshot("job-running").await;

    let pid = h
        .engine
        .store()
        .processes()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.job_id == id)
        .expect("the job's process")
        .process
        .pgid;
    browser.evaluate(&click("pause")).await;
    browser
        .wait_for(
            "paused",
            "document.querySelector('#job-state [data-state=paused]') !== null",
        )
        .await;
    assert_eq!(proc_state(pid), 'T', "the job's process is stopped");
    assert_eq!(
        browser.evaluate(ENABLED).await,
        json!(["resume", "stop", "stop?force=true", "cancel"])
    );
    browser.evaluate(&click("resume")).await;
    browser
        .wait_for(
            "running again",
            "document.querySelector('#job-state [data-state=running]') !== null",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ne!(proc_state(pid), 'T', "the job's process runs again");
    browser.evaluate(&click("stop")).await;
    browser
        .wait_for(
            "cancelled",
            "document.querySelector('#job-state [data-state=cancelled]') !== null",
        )
        .await;
    browser
        .wait_for(
            "the attempt's outcome",
            "document.getElementById('attempts').textContent.includes('cancelled')",
        )
        .await;
    assert_eq!(
        browser.evaluate(ENABLED).await,
        json!(["retry", "retry?from_checkpoint=true", "delete"])
    );
    assert_eq!(h.engine.get(&id).await.unwrap().state.as_str(), "cancelled");

    // A refused form shows the API's message.
    browser.evaluate("(location.hash = '#/submit', '1')").await;
    browser
        .wait_for(
            "the submit form",
            "document.getElementById('submit-form') !== null",
        )
        .await;
    browser
        .evaluate("(() => { const f = document.getElementById('submit-form'); f.command.value = 'true'; f.delay.value = 'soon'; f.requestSubmit(); return '1'; })()")
        .await;
    let said = browser
        .wait_for(
            "the refusal",
            "document.getElementById('submit-error').textContent",
        )
        .await;
    assert!(said.as_str().unwrap().contains("delay"), "{said}");

    // Queues: paused and resumed from their page.
    browser.evaluate("(location.hash = '#/queues', '1')").await;
    browser
        .wait_for(
            "the queues",
            "document.querySelector('button[data-queue=other]') !== null",
        )
        .await;
    browser
        .evaluate("(document.querySelector('button[data-queue=other]').click(), '1')")
        .await;
    browser
        .wait_for(
            "the queue paused",
            "document.querySelector('tr[data-queue=other] [data-paused=true]') !== null",
        )
        .await;
    let (_, queues) = h.call(Method::GET, "/api/queues", None).await;
    let other = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap()
        .clone();
    assert_eq!(other["paused"], true);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_says_so_and_catches_up_with_what_it_missed() {
    let h = harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let state = h.state.clone();
        tokio::spawn(async move {
            baton_server::serve(listener, state, &ServerOptions::default(), async {
                stopped.await.ok();
            })
            .await
        })
    };
    let mut browser = Browser::start().await;
    browser.open(&format!("http://{addr}/")).await;
    browser.wait_live().await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "echo", "id": "before"})).unwrap())
        .await
        .unwrap();
    browser
        .wait_for(
            "one completed",
            "document.querySelector('[data-count=completed]').textContent === '1'",
        )
        .await;

    // The server stops: the page says the stream is down, and when it last heard.
    stop.send(()).unwrap();
    first.await.unwrap().unwrap();
    let said = browser
        .wait_for(
            "the stream down",
            "document.getElementById('conn').dataset.state !== 'live' && document.getElementById('conn').textContent",
        )
        .await;
    assert!(said.as_str().unwrap().contains("last event"), "{said}");
    // Meanwhile jobs run and end.
    for i in 0..3 {
        h.engine
            .submit(
                serde_json::from_value(json!({"kind": "echo", "id": format!("missed-{i}")}))
                    .unwrap(),
            )
            .await
            .unwrap();
        h.engine.wait(&format!("missed-{i}")).await.unwrap();
    }
    // A new server on the same address: the page comes back and counts what it missed.
    let state = baton_server::AppState::new(h.engine.clone(), &ServerOptions::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        baton_server::serve(
            listener,
            state,
            &ServerOptions::default(),
            std::future::pending(),
        )
        .await
    });
    browser
        .wait_for(
            "the stream live again",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
    browser
        .wait_for(
            "the missed jobs counted",
            "document.querySelector('[data-count=completed]').textContent === '4'",
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_signs_in_and_sees_no_controls_an_operator_can_pause() {
    let options = ServerOptions {
        auth: AuthConfig {
            tokens: vec![token("watcher", Role::Viewer), token("ops", Role::Operator)],
            ..AuthConfig::default()
        },
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "looper", "id": "loop"})).unwrap())
        .await
        .unwrap();
    h.wait_state("loop", "running").await;

    let mut browser = Browser::start().await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    // The files load without a token; the data does not.
    browser.open(&format!("{base}/#/jobs/loop")).await;
    browser
        .wait_for(
            "the sign-in form",
            "document.getElementById('signin') !== null",
        )
        .await;
    let sign_in = |token: &str| {
        format!(
            "(() => {{ const f = document.getElementById('signin'); f.token.value = '{token}'; f.requestSubmit(); return '1'; }})()"
        )
    };
    browser.evaluate(&sign_in("nope")).await;
    browser
        .wait_for(
            "a refused token",
            "document.getElementById('signin')?.textContent.includes('invalid token')",
        )
        .await;
    browser.evaluate(&sign_in("watcher-token")).await;
    browser
        .wait_for(
            "the job for a viewer",
            "document.querySelector('#job-state [data-state=running]') !== null",
        )
        .await;
    assert_eq!(
        browser
            .evaluate("JSON.stringify(document.getElementById('who').textContent)")
            .await,
        json!("watcher (viewer)")
    );
    browser
        .wait_for(
            "the stream with a query token",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
    let enabled = browser
        .evaluate("JSON.stringify([...document.querySelectorAll('#controls button')].filter(b => !b.disabled).length)")
        .await;
    assert_eq!(enabled, json!(0), "a viewer has no controls");

    // Another tab's session: an operator.
    browser
        .evaluate("(sessionStorage.setItem('baton.token', 'ops-token'), '1')")
        .await;
    browser.reload().await;
    browser
        .wait_for(
            "the pause button",
            "document.querySelector('[data-action=pause]:not(:disabled)') !== null",
        )
        .await;
    browser
        .evaluate("(document.querySelector('[data-action=pause]').click(), '1')")
        .await;
    browser
        .wait_for(
            "paused",
            "document.querySelector('#job-state [data-state=paused]') !== null",
        )
        .await;
    assert_eq!(h.engine.get("loop").await.unwrap().state.as_str(), "paused");
    browser.close().await;
}

#[tokio::test]
async fn the_files_carry_a_policy_that_runs_only_their_own_scripts() {
    let h = harness().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let (status, body, headers) = h.raw_with_headers(Method::GET, path, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty());
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        // A second load with the tag is a 304.
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let (status, _, _) = h
            .raw_with_headers(Method::GET, path, None, &[("if-none-match", &etag)])
            .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
    }
    let (status, e) = h.call(Method::GET, "/ui/secrets.txt", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secrets.txt")
    );
    // The API itself keeps its stricter policy.
    let (_, _, headers) = h
        .raw_with_headers(Method::GET, "/api/stats", None, &[])
        .await;
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    // A forged Host is refused for the page as for the API.
    let (status, _) = h
        .raw(Method::GET, "/", None, &[("host", "attacker.example")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_checked_at_the_field_created_previewed_and_triggered() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    browser
        .open(&format!("http://127.0.0.1:{}/#/schedules", addr.port()))
        .await;
    browser
        .wait_for(
            "the form",
            "document.getElementById('schedule-form') !== null",
        )
        .await;
    let fill = |expr: &str| {
        format!(
            "(() => {{ const f = document.getElementById('schedule-form'); f.id.value = 'nightly'; \
             f.elements['trigger.expr'].value = '{expr}'; f.timezone.value = 'Europe/London'; \
             f.elements['job.command'].value = 'echo nightly'; \
             f.dispatchEvent(new Event('change')); return '1'; }})()"
        )
    };
    browser.evaluate(&fill("61 * * * *")).await;
    let said = browser
        .wait_for(
            "the cron refused at its field",
            "document.querySelector('[data-error-for=\"trigger.expr\"]').textContent",
        )
        .await;
    assert!(
        said.as_str().unwrap().contains("invalid cron expression"),
        "{said}"
    );
    browser.evaluate(&fill("0 2 * * *")).await;
    let runs = browser
        .wait_for(
            "five runs previewed",
            "document.querySelectorAll('#schedule-preview li').length === 5 && [...document.querySelectorAll('#schedule-preview time')].map(t => t.getAttribute('datetime'))",
        )
        .await;
    assert_eq!(runs.as_array().unwrap().len(), 5);
    assert_eq!(
        browser
            .evaluate("JSON.stringify(document.querySelector('[data-error-for=\"trigger.expr\"]').textContent)")
            .await,
        json!(""),
        "the error went with the mistake"
    );
    browser
        .evaluate("(document.getElementById('schedule-form').requestSubmit(), '1')")
        .await;
    browser
        .wait_for(
            "the schedule's page",
            "location.hash === '#/schedules/nightly' && document.getElementById('schedule-when')",
        )
        .await;
    let words = browser
        .evaluate("JSON.stringify(document.getElementById('schedule-when').textContent)")
        .await;
    assert_eq!(words, json!("cron 0 2 * * * (Europe/London)"));
    let (status, stored) = h.call(Method::GET, "/api/schedules/nightly", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["next_run"].as_str(), runs[0].as_str());

    browser
        .evaluate("(document.querySelector('[data-action=trigger]').click(), '1')")
        .await;
    browser
        .wait_for(
            "the run in the history, completed",
            "document.querySelector('#history [data-state=completed]') !== null",
        )
        .await;
    browser.screenshot("schedules").await;
    let (_, history) = h
        .call(Method::GET, "/api/schedules/nightly/history", None)
        .await;
    assert_eq!(history["fires"][0]["outcome"], "completed");
    // The list tells the last run's outcome, linked to its job.
    let (_, stored) = h.call(Method::GET, "/api/schedules/nightly", None).await;
    let job = stored["last_job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(stored["last_job"]["state"], "completed", "{stored}");
    browser
        .evaluate("(location.hash = '#/schedules', '1')")
        .await;
    let href = browser
        .wait_for(
            "the last run's outcome in the list",
            "document.querySelector('[data-schedule=nightly] .last-run a [data-state=completed]') && document.querySelector('[data-schedule=nightly] .last-run a').getAttribute('href')",
        )
        .await;
    assert_eq!(href, json!(format!("#/jobs/{job}")));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_is_drawn_and_its_nodes_change_live() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let (status, made) = h
        .call(
            Method::POST,
            "/api/workflows",
            Some(json!({"id": "nightly", "jobs": {
                "fetch": {"kind": "command", "command": ["sleep", "3"]},
                "parse": {"kind": "command", "command": ["sleep", "1"], "depends_on": ["fetch"]},
                "side": {"kind": "echo", "depends_on": ["fetch"]},
                "report": {"kind": "echo", "depends_on": ["parse", "side"]}
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    browser
        .open(&format!(
            "http://127.0.0.1:{}/#/workflows/nightly",
            addr.port()
        ))
        .await;
    let drawn = browser
        .wait_for(
            "the graph",
            "document.querySelectorAll('#dag .node').length === 4 && [document.querySelectorAll('#dag .node').length, document.querySelectorAll('#dag .edge').length]",
        )
        .await;
    assert_eq!(drawn, json!([4, 4]));
    // Layers: fetch above parse and side, report below both.
    let rows = browser
        .evaluate("JSON.stringify(Object.fromEntries([...document.querySelectorAll('#dag .node')].map(g => [g.textContent.replace(/(queued|awaiting|running|completed|scheduled)$/, ''), Number(g.getAttribute('transform').match(/,([0-9.]+)/)[1])])))")
        .await;
    assert!(rows["fetch"].as_f64() < rows["parse"].as_f64(), "{rows}");
    assert_eq!(rows["parse"], rows["side"], "{rows}");
    assert!(rows["side"].as_f64() < rows["report"].as_f64(), "{rows}");
    let report = made["jobs"]["report"].as_str().unwrap().to_owned();
    // `fetch` runs for 3 s: long enough for the page to be seen with it running when
    // the browser starts slowly on a busy machine.
    let running = browser
        .wait_for(
            "a node running",
            "document.querySelector('#dag .node[data-state=running]')?.textContent",
        )
        .await;
    // `side` (a no-op) may be caught running for the instant it runs.
    let running = running.as_str().unwrap();
    assert!(
        ["fetch", "parse", "side"]
            .iter()
            .any(|n| running.starts_with(n)),
        "{running}"
    );
    browser.screenshot("workflow").await;
    browser
        .wait_for(
            "the last node completed, live",
            &format!("document.querySelector('#dag .node[data-job=\"{report}\"]').dataset.state === 'completed'"),
        )
        .await;
    assert_eq!(
        h.engine.get(&report).await.unwrap().state.as_str(),
        "completed"
    );
    // The page was not reloaded: the critical path drawn at first is still there.
    let path = browser
        .evaluate("JSON.stringify(document.getElementById('critical').textContent)")
        .await;
    assert!(path.as_str().unwrap().starts_with("fetch"), "{path}");
    // A node opens its job.
    browser
        .evaluate(&format!(
            "(document.querySelector('#dag .node[data-job=\"{report}\"]').dispatchEvent(new MouseEvent('click', {{bubbles: true}})), '1')"
        ))
        .await;
    browser
        .wait_for("the job's page", &format!("location.hash === '#/jobs/{report}' && document.getElementById('job-workflow')?.textContent === 'nightly'"))
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried_from_its_page_and_fifty_queued_jobs_are_cancelled_by_filter() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    h.engine.pause_queue("other").await.unwrap();
    let specs = (0..50)
        .map(|i| {
            serde_json::from_value(
                json!({"kind": "echo", "id": format!("wait-{i}"), "queue": "other"}),
            )
            .unwrap()
        })
        .collect();
    h.engine.submit_many(specs).await.unwrap();
    h.engine
        .submit(serde_json::from_value(json!({"kind": "fail", "id": "doomed"})).unwrap())
        .await
        .unwrap();
    h.wait_state("doomed", "failed").await;

    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    browser.open(&format!("{base}/#/jobs?state=failed")).await;
    browser
        .wait_for(
            "the failed job listed",
            "document.querySelector('#jobs tr[data-job=doomed] [data-state=failed]') !== null",
        )
        .await;
    browser
        .evaluate("(document.querySelector('#jobs tr[data-job=doomed] a').click(), '1')")
        .await;
    browser
        .wait_for(
            "its page",
            "document.querySelector('[data-action=retry]:not(:disabled)') !== null",
        )
        .await;
    browser.evaluate(&click("retry")).await;
    browser
        .wait_for(
            "a second attempt, failed again",
            "document.querySelectorAll('#attempts tr').length === 2 && document.querySelector('#job-state [data-state=failed]') !== null",
        )
        .await;
    assert_eq!(h.engine.attempts("doomed").await.unwrap().len(), 2);

    // Ordered by the end: the sort select reloads the list, which holds only the
    // finished job and shows when it finished.
    browser.evaluate("(location.hash = '#/jobs', '1')").await;
    browser
        .wait_for(
            "the whole list",
            "document.querySelector('#jobs tr[data-job=wait-49]') !== null",
        )
        .await;
    browser
        .evaluate(
            "(() => { const s = document.getElementById('sort'); s.value = 'finished'; \
             s.dispatchEvent(new Event('change')); return '1'; })()",
        )
        .await;
    let rows = browser
        .wait_for(
            "the list by end time",
            "location.hash.includes('sort=finished') && document.querySelector('#jobs tr[data-job=wait-49]') === null \
             && [...document.querySelectorAll('th')].some(t => t.textContent === 'Finished') \
             && document.querySelectorAll('#jobs tr').length",
        )
        .await;
    assert_eq!(rows, json!(1), "only the finished job");

    // Every queued job of the paused queue, by the filter; the page says how many.
    browser
        .evaluate("(location.hash = '#/jobs?state=queued&queue=other', '1')")
        .await;
    let total = browser
        .wait_for("the total", "document.getElementById('total')?.textContent.startsWith('50') && document.getElementById('total').textContent")
        .await;
    assert_eq!(total, json!("50 matching"));
    browser
        .evaluate(
            "(() => { window.asked = []; window.confirm = q => (window.asked.push(q), true); \
             document.getElementById('bulk-scope').value = 'filter'; \
             document.querySelector('[data-bulk=cancel]').click(); return '1'; })()",
        )
        .await;
    let said = browser
        .wait_for(
            "the result",
            "document.getElementById('bulk-result').textContent",
        )
        .await;
    assert_eq!(said, json!("Cancel: 50 of 50 done"));
    assert_eq!(
        browser.evaluate("JSON.stringify(window.asked)").await,
        json!(["Cancel 50 jobs?"])
    );
    for i in 0..50 {
        assert_eq!(
            h.engine
                .get(&format!("wait-{i}"))
                .await
                .unwrap()
                .state
                .as_str(),
            "cancelled"
        );
    }
    // Selected rows: a refusal is counted with its reason.
    browser
        .evaluate("(location.hash = '#/jobs?queue=other', '1')")
        .await;
    browser
        .wait_for(
            "the cancelled jobs",
            "document.getElementById('bulk-result')?.textContent === '' && document.querySelectorAll('#jobs [data-state=cancelled]').length === 50",
        )
        .await;
    browser
        .evaluate(
            "(() => { document.querySelector('[data-select=\"wait-1\"]').click(); document.querySelector('[data-select=\"wait-2\"]').click(); \
             document.getElementById('bulk-scope').value = 'selected'; document.querySelector('[data-bulk=pause]').click(); return '1'; })()",
        )
        .await;
    let said = browser
        .wait_for(
            "the refusal counted",
            "document.getElementById('bulk-result').textContent",
        )
        .await;
    assert_eq!(
        said,
        json!("Pause: 0 of 2 done; refused: 2 illegal transition")
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_inspector_filters_and_holds_its_view_and_pipelines_run_from_their_page() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let (status, _) = h
        .call(
            Method::PUT,
            "/api/pipelines/nightly",
            Some(json!({"steps": [{"name": "fetch", "command": ["true"]}, {"name": "load", "command": ["true"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut browser = Browser::start().await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    browser.open(&format!("{base}/#/events")).await;
    browser.wait_live().await;
    browser
        .evaluate("(document.getElementById('event-type').value = 'job.completed', '1')")
        .await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "echo", "id": "seen"})).unwrap())
        .await
        .unwrap();
    h.engine.wait("seen").await.unwrap();
    let types = browser
        .wait_for(
            "the completion",
            "document.querySelectorAll('#event-rows tr').length > 0 && [...document.querySelectorAll('#event-rows tr')].map(r => r.children[1].textContent)",
        )
        .await;
    assert_eq!(types, json!(["job.completed"]), "only the filtered type");
    // A held view keeps what arrives, and shows it on resume.
    browser
        .evaluate("(document.getElementById('event-pause').click(), '1')")
        .await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "echo", "id": "held"})).unwrap())
        .await
        .unwrap();
    h.engine.wait("held").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        browser
            .evaluate("JSON.stringify(document.querySelectorAll('#event-rows tr').length)")
            .await,
        json!(1)
    );
    browser
        .evaluate("(document.getElementById('event-pause').click(), '1')")
        .await;
    browser
        .wait_for(
            "the held event shown",
            "document.querySelectorAll('#event-rows tr').length === 2",
        )
        .await;

    // Pipelines: listed with their steps, run after a confirmation.
    browser
        .evaluate("(location.hash = '#/pipelines', '1')")
        .await;
    let steps = browser
        .wait_for("the pipeline", "document.querySelector('#pipelines tr[data-pipeline=nightly]')?.children[1].textContent")
        .await;
    assert_eq!(steps, json!("fetch → load"));
    browser
        .evaluate("(window.confirm = () => true, document.querySelector('[data-run=nightly]').click(), '1')")
        .await;
    let opened = browser
        .wait_for(
            "the run's page",
            "location.hash.startsWith('#/jobs/') && location.hash",
        )
        .await;
    let id = opened
        .as_str()
        .unwrap()
        .trim_start_matches("#/jobs/")
        .to_owned();
    let job = h.engine.wait(&id).await.unwrap();
    assert_eq!(
        (job.state.as_str(), job.runs.pipeline.as_deref()),
        ("completed", Some("nightly"))
    );

    // Servers: this one, with its heartbeat, and a remote worker with its kinds.
    let (mut worker, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/api/workers/ws", addr.port()))
            .await
            .unwrap();
    let hello = json!({"op": "hello", "name": "py-scraper", "kinds": ["scrape"], "slots": 3});
    futures::SinkExt::send(
        &mut worker,
        tokio_tungstenite::tungstenite::Message::Text(hello.to_string().into()),
    )
    .await
    .unwrap();
    futures::StreamExt::next(&mut worker).await;
    browser.evaluate("(location.hash = '#/servers', '1')").await;
    let server = h.engine.server().id.clone();
    browser
        .wait_for("the server", &format!("document.querySelector('#servers tr[data-server=\"{server}\"]')?.textContent.includes('ago')"))
        .await;
    let row = browser
        .wait_for(
            "the worker",
            "document.querySelector('#workers tr[data-worker]')?.textContent",
        )
        .await;
    let row = row.as_str().unwrap_or_default();
    assert!(
        row.contains("py-scraper") && row.contains("scrape") && row.contains("0 / 3"),
        "{row}"
    );
    drop(worker);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_theme_and_keys_are_the_persons_choice_and_failures_are_told() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    for i in 0..3 {
        h.engine
            .submit(serde_json::from_value(json!({"kind": "echo", "id": format!("e{i}")})).unwrap())
            .await
            .unwrap();
        h.engine.wait(&format!("e{i}")).await.unwrap();
    }
    let mut browser = Browser::start().await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    browser.open(&format!("{base}/#/jobs")).await;
    browser
        .wait_for(
            "the list",
            "document.querySelectorAll('#jobs tr').length === 3",
        )
        .await;
    // UTC times, remembered across a reload.
    browser
        .evaluate("(() => { const s = document.getElementById('pref-time'); s.value = 'utc'; s.dispatchEvent(new Event('change')); return '1'; })()")
        .await;
    browser
        .wait_for(
            "UTC times",
            "document.querySelector('#jobs time')?.textContent.endsWith(' UTC')",
        )
        .await;
    browser.reload().await;
    browser
        .wait_for(
            "UTC times after a reload",
            "document.querySelector('#jobs time')?.textContent.endsWith(' UTC')",
        )
        .await;
    // Dark, by choice.
    let dark = browser
        .evaluate("(() => { const s = document.getElementById('pref-theme'); s.value = 'dark'; s.dispatchEvent(new Event('change')); return JSON.stringify(getComputedStyle(document.body).backgroundColor); })()")
        .await;
    assert_eq!(dark, json!("rgb(21, 23, 27)"));
    // j and k move in the list; Enter opens the row.
    browser
        .evaluate("(['j', 'j', 'k', 'j'].forEach(key => document.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}))), '1')")
        .await;
    let focused = browser
        .evaluate("JSON.stringify([...document.querySelectorAll('#jobs tr')].findIndex(r => r.classList.contains('focused')))")
        .await;
    assert_eq!(focused, json!(1));
    browser
        .evaluate("(document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true})), '1')")
        .await;
    browser
        .wait_for("the row's job", "location.hash === '#/jobs/e1'")
        .await;
    // A failure is told on whatever page is open; a short job's end is not.
    for (kind, id) in [("echo", "short"), ("fail", "oops")] {
        h.engine
            .submit(serde_json::from_value(json!({"kind": kind, "id": id})).unwrap())
            .await
            .unwrap();
        h.engine.wait(id).await.unwrap();
    }
    browser
        .wait_for(
            "a toast",
            "document.getElementById('toasts').textContent.includes('oops failed: boom')",
        )
        .await;
    let toasts = browser
        .evaluate("JSON.stringify(document.getElementById('toasts').textContent)")
        .await;
    assert!(
        !toasts.as_str().unwrap().contains("short"),
        "a job that ran under a minute is not told: {toasts}"
    );
    // A long job's end is (the threshold is the person's, here 0 ms).
    browser
        .evaluate("(localStorage.setItem('baton.long', '0'), '1')")
        .await;
    browser.reload().await;
    browser.wait_live().await;
    h.engine
        .submit(serde_json::from_value(json!({"kind": "echo", "id": "long"})).unwrap())
        .await
        .unwrap();
    browser
        .wait_for(
            "a toast for the long job",
            "document.getElementById('toasts').textContent.includes('long completed after')",
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_a_second_do_not_freeze_the_page() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    // The event inspector draws a row for every event: the heaviest page under a burst.
    browser.open(&format!("{base}/#/events")).await;
    browser.wait_live().await;
    let mut sub = h.engine.subscribe().await.unwrap();
    // Each looper reports progress every 3 ms.
    for i in 0..20 {
        let queue = if i < 16 { "default" } else { "other" };
        h.engine
            .submit(
                serde_json::from_value(
                    json!({"kind": "looper", "id": format!("busy{i}"), "queue": queue, "payload": {"every_ms": 3}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    h.wait_state("busy19", "running").await;
    browser.record_frames().await;
    let window = Duration::from_secs(4);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut last_id = 0u64;
    while let Ok(Some(e)) =
        tokio::time::timeout(window.saturating_sub(started.elapsed()), sub.next()).await
    {
        sent += 1;
        last_id = e.id;
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    let frames = browser.frames().await;
    for i in 0..20 {
        h.call(Method::POST, &format!("/api/jobs/busy{i}/cancel"), None)
            .await;
    }
    eprintln!("{rate:.0} events/s to the page; frames {frames}");
    assert!(
        rate >= 1000.0,
        "the engine sent only {rate:.0} events/s: the test did not make the burst it is about"
    );
    // The page kept drawing: no frame held for half a second, at least 5 frames a second.
    let max = frames["max"].as_f64().unwrap();
    let n = frames["n"].as_u64().unwrap();
    assert!(
        max < 500.0,
        "a frame took {max:.0} ms under {rate:.0} events/s"
    );
    assert!(n >= 20, "only {n} frames in 4 s under {rate:.0} events/s");
    // And it kept up: the newest event the server sent is on the page.
    browser
        .wait_for(
            "the page caught up",
            &format!("document.querySelector('#event-rows tr[data-event=\"{last_id}\"]') !== null || Number(document.querySelector('#event-rows tr')?.dataset.event) > {last_id}"),
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_put_away_catches_up_when_it_returns() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let mut browser = Browser::start().await;
    browser
        .open(&format!("http://127.0.0.1:{}/", addr.port()))
        .await;
    browser.wait_live().await;
    let completed = "Number(document.querySelector('[data-count=completed]').textContent)";
    browser
        .wait_for("the counters", &format!("{completed} === 0"))
        .await;
    browser.lifecycle("frozen").await;
    for i in 0..30 {
        let id = format!("away{i}");
        h.engine
            .submit(serde_json::from_value(json!({"kind": "echo", "id": id})).unwrap())
            .await
            .unwrap();
        h.engine.wait(&id).await.unwrap();
    }
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({completed})"))
            .await,
        json!(0),
        "a frozen page ran no script"
    );
    // Running again but still in the background: it draws nothing yet.
    browser.lifecycle("active").await;
    assert_eq!(
        browser
            .evaluate("JSON.stringify(document.visibilityState)")
            .await,
        json!("hidden")
    );
    browser.bring_to_front().await;
    browser
        .wait_for("the missed completions", &format!("{completed} >= 30"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({completed})"))
            .await,
        json!(30),
        "every missed event counted once"
    );
    browser.close().await;
}

/// The text of the element `id` in the page.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}')?.textContent")
}

/// Polls until `path` holds `lines` lines (a download is written under another name
/// first, then renamed); what it holds.
async fn downloaded(path: &std::path::Path, lines: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.lines().count() == lines
        {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never held {lines} lines",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_page_shows_rate_stalls_checkpoints_a_searchable_log_and_linked_jobs() {
    // A short stall time, as `[dashboard] stalled_after` would set it.
    let options = ServerOptions {
        stalled_after: Duration::from_millis(1500),
        ..ServerOptions::default()
    };
    let h = harness_with(options.clone()).await;
    let addr = serve(&h, options).await;
    let work = tempfile::TempDir::new().unwrap();
    let go = work.path().join("go");
    // Thirty steady lines with a checkpoint every ten, silence until the test says go,
    // then seventy more.
    let script = r#"i=0
while [ $i -lt 30 ]; do i=$((i+1)); echo "::progress $i%"; echo "line $i"; if [ $((i % 10)) -eq 0 ]; then echo "::checkpoint {\"i\": $i}"; fi; sleep 0.05; done
while [ ! -f GO ]; do sleep 0.1; done
while [ $i -lt 100 ]; do i=$((i+1)); echo "::progress $i%"; echo "line $i"; sleep 0.02; done"#
        .replace("GO", go.to_str().unwrap());
    let submit = |body: serde_json::Value| {
        let h = h.clone();
        async move {
            let (status, answer) = h.call(Method::POST, "/api/jobs", Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
        }
    };
    submit(json!({"kind": "command", "id": "steady", "command": ["sh", "-c", script]})).await;

    let mut browser = Browser::start().await;
    browser.size(1280, 1000).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    browser.open(&format!("{base}/#/jobs/steady")).await;

    // While it reports: its rate and the time it still needs.
    let rate = browser
        .wait_for(
            "the rate and time left",
            &format!(
                "{}?.includes('left') && {}",
                text_of("job-rate"),
                text_of("job-rate")
            ),
        )
        .await;
    let rate = rate.as_str().unwrap();
    assert!(rate.contains("%/") && rate.contains("· about "), "{rate}");
    // Its checkpoints arrive as rows: step, attempt, size of the data, the data.
    browser
        .wait_for(
            "three checkpoints",
            "document.querySelectorAll('#checkpoints tr').length === 3",
        )
        .await;
    let rows = browser
        .evaluate("JSON.stringify([...document.querySelectorAll('#checkpoints tr')].map(r => [r.querySelector('[data-attempt]').textContent, r.querySelector('[data-size]').textContent, r.querySelector('details pre').textContent.replace(/\\s+/g, '')]))")
        .await;
    assert_eq!(
        rows,
        json!([
            ["1", "8 B", "{\"i\":10}"],
            ["1", "8 B", "{\"i\":20}"],
            ["1", "8 B", "{\"i\":30}"]
        ])
    );
    let (_, saved) = h
        .call(Method::GET, "/api/jobs/steady/checkpoints", None)
        .await;
    let seqs = browser
        .evaluate("JSON.stringify([...document.querySelectorAll('#checkpoints tr')].map(r => Number(r.dataset.seq)))")
        .await;
    assert_eq!(
        seqs,
        json!(
            saved["checkpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["seq"].clone())
                .collect::<Vec<_>>()
        ),
        "the rows are the API's checkpoints"
    );

    // Silent for longer than the stall time: marked stalled, live, without a reload.
    let stalled = browser
        .wait_for("the stalled mark", "document.getElementById('job-stalled')?.hidden === false && document.getElementById('job-stalled').textContent")
        .await;
    assert!(
        stalled
            .as_str()
            .unwrap()
            .starts_with("stalled: nothing new for "),
        "{stalled}"
    );
    assert_eq!(
        h.engine.get("steady").await.unwrap().state.as_str(),
        "running"
    );
    browser.screenshot("job-stalled").await;
    std::fs::write(&go, "").unwrap();
    browser
        .wait_for(
            "the stalled mark gone once it reports again",
            "document.getElementById('job-stalled').hidden",
        )
        .await;
    browser
        .wait_for(
            "completed",
            "document.querySelector('#job-state [data-state=completed]') !== null",
        )
        .await;
    assert!(
        browser
            .evaluate("JSON.stringify(document.getElementById('job-stalled').hidden)")
            .await
            == json!(true),
        "a finished job is not stalled"
    );

    // The log: a search narrows the lines to those that match, marked, with a count.
    let visible = "[...document.querySelectorAll('#job-log .line')].filter(n => !n.hidden).length";
    browser
        .wait_for("every line", &format!("{visible} === 100"))
        .await;
    browser
        .evaluate("(() => { const s = document.getElementById('log-search'); s.value = 'line 1'; s.dispatchEvent(new Event('input')); return '1'; })()")
        .await;
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({visible})"))
            .await,
        json!(12),
        "line 1, 10 to 19, 100"
    );
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({})", text_of("log-count")))
            .await,
        json!("12 of 100 lines match")
    );
    assert_eq!(
        browser
            .evaluate("JSON.stringify(document.querySelectorAll('#job-log mark').length)")
            .await,
        json!(12)
    );
    browser
        .evaluate("(() => { const s = document.getElementById('log-search'); s.value = ''; s.dispatchEvent(new Event('input')); return '1'; })()")
        .await;
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({visible})"))
            .await,
        json!(100)
    );

    // Download: every line of every page of the log, into a file.
    submit(json!({"kind": "command", "id": "chatty", "command": ["sh", "-c", "seq 1 2500"]})).await;
    h.finished("chatty").await;
    let downloads = tempfile::TempDir::new().unwrap();
    browser.download_to(downloads.path()).await;
    browser
        .evaluate("(location.hash = '#/jobs/chatty', '1')")
        .await;
    browser
        .wait_for(
            "chatty's log",
            &format!("{} === '2500 lines'", text_of("log-count")),
        )
        .await;
    browser
        .evaluate("(document.getElementById('log-download').click(), '1')")
        .await;
    let file = downloaded(&downloads.path().join("chatty.log"), 2500).await;
    let want: String = (1..=2500).map(|i| format!("{i}\n")).collect();
    assert!(file == want, "the file holds the 2500 lines in order");

    // Dependencies and dependents are links that open the other job's page.
    submit(json!({"kind": "echo", "id": "first"})).await;
    submit(json!({"kind": "echo", "id": "second", "depends_on": ["first"]})).await;
    submit(json!({"kind": "echo", "id": "third", "depends_on": ["first"]})).await;
    h.finished("second").await;
    h.finished("third").await;
    browser
        .evaluate("(location.hash = '#/jobs/first', '1')")
        .await;
    let linked = browser
        .wait_for("the dependents", "document.querySelectorAll('#job-dependents a').length === 2 && JSON.stringify([...document.querySelectorAll('#job-dependents a')].map(a => a.textContent))")
        .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(linked.as_str().unwrap()).unwrap(),
        json!(["second", "third"])
    );
    assert_eq!(
        browser
            .evaluate(&format!("JSON.stringify({})", text_of("job-dependencies")))
            .await,
        json!("–")
    );
    browser
        .evaluate("(document.querySelector('#job-dependents a').click(), '1')")
        .await;
    browser
        .wait_for("second's page", "location.hash === '#/jobs/second' && document.querySelector('h1')?.textContent.startsWith('Job second')")
        .await;
    let back = browser
        .wait_for(
            "its dependency",
            "document.querySelector('#job-dependencies [data-job=first]')?.textContent",
        )
        .await;
    assert!(
        back.as_str().unwrap().contains("first") && back.as_str().unwrap().contains("completed"),
        "{back}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_jobs_page_says_when_the_engine_died_and_what_was_lost() {
    use baton_core::Limits;
    use baton_engine::{JobSpec, ServerInfo};
    use baton_store::{ClaimRequest, Store, Update};
    // A server that ran a job, checkpointed, went on, and died: its store as it left it.
    let dir = tempfile::TempDir::new().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let heartbeat = now - 4000;
    {
        let store = baton_store::SqliteStore::open(baton_store::SqliteOptions::new(
            dir.path().join("baton.db"),
        ))
        .unwrap();
        store
            .register_server(ServerInfo {
                id: "dead-server".into(),
                host: "gone".into(),
                pid: 1,
                url: None,
                started_at: now - 60_000,
                heartbeat_at: heartbeat,
                stopped_at: None,
                queues: vec!["default".into()],
                workers: 1,
            })
            .await
            .unwrap();
        let spec = JobSpec::command(["sh", "-c", "echo resumed"]).id("fragile");
        store
            .submit(vec![spec.validate(now - 9000, &Limits::default()).unwrap()])
            .await
            .unwrap();
        let claimed = store
            .claim(ClaimRequest {
                queue: "default".into(),
                limit: 1,
                server_id: "dead-server".into(),
                now: now - 8000,
                kinds: None,
            })
            .await
            .unwrap();
        let fence = claimed[0].fence;
        let updates = [
            Update::Checkpoint {
                data: json!({"page": 3}),
                step: Some("fetch".into()),
            },
            Update::Progress {
                fraction: Some(0.4),
                message: None,
            },
            Update::Step("parse".into()),
            Update::Progress {
                fraction: Some(0.5),
                message: None,
            },
        ];
        for (i, u) in updates.into_iter().enumerate() {
            store
                .update("fragile", fence, now - 7000 + i as i64 * 100, u)
                .await
                .unwrap();
        }
    }
    // The next engine on that database finds it and records the crash.
    let h = common::harness_in(dir, ServerOptions::default()).await;
    let addr = serve(&h, ServerOptions::default()).await;
    h.finished("fragile").await;

    let mut browser = Browser::start().await;
    browser.size(1280, 1000).await;
    browser
        .open(&format!("http://127.0.0.1:{}/#/jobs/fragile", addr.port()))
        .await;
    browser
        .wait_for(
            "the crash",
            "document.getElementById('job-crash')?.hidden === false",
        )
        .await;
    let shown = browser
        .evaluate("JSON.stringify(Object.fromEntries([...document.querySelectorAll('#job-crash dd')].map(d => [d.id, d.textContent])))")
        .await;
    let died = shown["crash-died"].as_str().unwrap();
    assert!(
        died.starts_with("after ") && died.contains("its last heartbeat (server dead-server)"),
        "{shown}"
    );
    let heartbeat_text = browser
        .evaluate(&format!(
            "JSON.stringify(new Date({heartbeat}).toLocaleString())"
        ))
        .await;
    assert!(
        died.contains(heartbeat_text.as_str().unwrap()),
        "the heartbeat's time: {shown}"
    );
    let (_, saved) = h
        .call(Method::GET, "/api/jobs/fragile/checkpoints", None)
        .await;
    let seq = &saved["checkpoints"][0]["seq"];
    assert!(
        shown["crash-checkpoint"]
            .as_str()
            .unwrap()
            .starts_with(&format!("#{seq} of attempt 1, ")),
        "{shown}"
    );
    assert_eq!(
        shown["crash-since"], "2 progress updates, 1 step, 0 outputs, 0 log lines",
        "{shown}"
    );
    assert!(
        shown["crash-at"]
            .as_str()
            .unwrap()
            .contains("the job was running"),
        "{shown}"
    );
    // The log marks the crash and the recovery between the attempts' lines.
    let log = browser
        .evaluate(&format!("JSON.stringify({})", text_of("job-log")))
        .await;
    let log = log.as_str().unwrap();
    let (crashed, resumed) = (
        log.find("— crashed —").unwrap(),
        log.find("resumed\n").unwrap(),
    );
    let checkpoint = log.find(&format!("— checkpoint {seq} —")).unwrap();
    assert!(checkpoint < crashed && crashed < resumed, "{log}");
    browser.screenshot("job-crashed").await;
    browser.close().await;
}
