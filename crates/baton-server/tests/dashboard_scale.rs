//! The dashboard in real Chromium at the edges of its use: the workflow list following
//! the stream, a 500-node workflow drawn readably and updated without long frames, and
//! every page on a phone's width.

mod common;

use axum::http::{Method, StatusCode};
use baton_server::ServerOptions;
use common::chromium::Browser;
use common::{Harness, harness, serve};
use serde_json::{Value, json};

async fn post(h: &Harness, uri: &str, body: Option<Value>) -> Value {
    let (status, out) = h.call(Method::POST, uri, body).await;
    assert!(status.is_success(), "{uri}: {status} {out}");
    out
}

/// A workflow of `layers` layers of `width` echo jobs; each job depends on two of the
/// layer above. Names are long enough that some must be shortened to fit their box.
fn layered(id: &str, layers: usize, width: usize) -> Value {
    let name = |l: usize, n: usize| format!("layer-{l}-extract-part-{n:03}");
    let mut jobs = serde_json::Map::new();
    for l in 0..layers {
        for n in 0..width {
            let mut job = json!({"kind": "echo"});
            if l > 0 {
                job["depends_on"] = json!([name(l - 1, n), name(l - 1, (n + 1) % width)]);
            }
            jobs.insert(name(l, n), job);
        }
    }
    json!({"id": id, "jobs": jobs})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_list_is_in_the_nav_and_follows_the_stream() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    post(&h, "/api/queues/default/pause", None).await;
    post(&h, "/api/workflows", Some(layered("older", 2, 2))).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    post(&h, "/api/workflows", Some(layered("newer", 2, 3))).await;

    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    browser
        .open(&format!("http://127.0.0.1:{}/", addr.port()))
        .await;
    browser
        .wait_for(
            "the overview",
            "document.getElementById('counters') !== null",
        )
        .await;
    browser
        .evaluate("(document.querySelector('#nav a[href=\"#/workflows\"]').click(), '1')")
        .await;
    let ids = browser
        .wait_for(
            "the list",
            "document.querySelectorAll('#workflows tr').length === 2 && [...document.querySelectorAll('#workflows tr')].map(r => r.dataset.workflow)",
        )
        .await;
    assert_eq!(ids, json!(["newer", "older"]), "newest first");
    let row = |id: &str, what: &str| {
        format!("document.querySelector('#workflows tr[data-workflow=\"{id}\"]')?.{what}")
    };
    let counts = browser
        .evaluate(&format!(
            "JSON.stringify({})",
            row("newer", "querySelector('.counts').textContent")
        ))
        .await;
    assert_eq!(counts, json!("3 awaiting3 queued"));
    // The page is not reloaded from here on: a mark on its window would be lost.
    browser.evaluate("(window.unreloaded = true, '1')").await;

    // A workflow submitted now appears at the top; its jobs run and the counts follow.
    post(&h, "/api/workflows", Some(layered("live", 3, 2))).await;
    browser
        .wait_for(
            "the new workflow at the top",
            "document.querySelector('#workflows tr')?.dataset.workflow === 'live'",
        )
        .await;
    browser
        .wait_for(
            "its six jobs counted",
            &format!("{} === '6'", row("live", "children[2].textContent")),
        )
        .await;
    post(&h, "/api/queues/default/resume", None).await;
    for (id, n) in [("live", 6), ("newer", 6), ("older", 4)] {
        browser
            .wait_for(
                &format!("{id} completed, live"),
                &format!(
                    "{} === '{n} completed' && {} === 'completed'",
                    row(id, "querySelector('.counts').textContent"),
                    row(id, "children[1].textContent")
                ),
            )
            .await;
    }
    assert_eq!(
        browser
            .evaluate("JSON.stringify(window.unreloaded === true)")
            .await,
        json!(true)
    );
    browser.screenshot("workflows").await;

    browser
        .evaluate(&format!(
            "({}.click(), '1')",
            row("older", "querySelector('a')")
        ))
        .await;
    browser
        .wait_for(
            "the workflow's graph",
            "location.hash === '#/workflows/older' && document.querySelectorAll('#dag .node').length === 4",
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes_are_drawn_readably_and_stay_fluid_while_they_finish() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    post(&h, "/api/queues/default/pause", None).await;
    post(&h, "/api/workflows", Some(layered("big", 10, 50))).await;

    let mut browser = Browser::start().await;
    browser.size(1280, 900).await;
    browser
        .open(&format!("http://127.0.0.1:{}/#/workflows/big", addr.port()))
        .await;
    browser
        .wait_for(
            "500 nodes",
            "document.querySelectorAll('#dag .node').length === 500",
        )
        .await;
    browser.wait_live().await;

    // Readable: no two boxes overlap, each is full size, every label fits its box, and
    // the drawing scrolls inside its frame rather than shrinking to the page.
    let layout = browser
        .evaluate(
            "(() => {
              const boxes = [...document.querySelectorAll('#dag .node')].map(g => g.querySelector('rect').getBoundingClientRect());
              let overlaps = 0;
              for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
                const a = boxes[i], b = boxes[j];
                if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++;
              }
              const clipped = [...document.querySelectorAll('#dag .node')].filter(g => {
                const box = g.querySelector('rect').getBoundingClientRect();
                return [...g.querySelectorAll('text')].some(t => { const r = t.getBoundingClientRect(); return r.left < box.left || r.right > box.right - 4; });
              }).length;
              const frame = document.querySelector('.dag');
              return JSON.stringify({ overlaps, clipped,
                narrowest: Math.min(...boxes.map(b => b.width)), lowest: Math.min(...boxes.map(b => b.height)),
                scrolls: frame.scrollWidth > frame.clientWidth,
                pageOverflow: document.scrollingElement.scrollWidth > innerWidth,
                shortened: [...document.querySelectorAll('#dag .node text:first-of-type')].filter(t => t.textContent.endsWith('…')).length,
                title: document.querySelector('#dag .node title').textContent });
            })()",
        )
        .await;
    assert_eq!(layout["overlaps"], 0, "{layout}");
    assert_eq!(layout["clipped"], 0, "{layout}");
    assert!(layout["narrowest"].as_f64().unwrap() >= 150.0, "{layout}");
    assert!(layout["lowest"].as_f64().unwrap() >= 40.0, "{layout}");
    assert_eq!(layout["scrolls"], true, "{layout}");
    assert_eq!(layout["pageOverflow"], false, "{layout}");
    assert_eq!(
        layout["shortened"], 500,
        "long names end in an ellipsis: {layout}"
    );
    assert!(
        layout["title"]
            .as_str()
            .unwrap()
            .starts_with("layer-0-extract-part-000 ("),
        "{layout}"
    );
    browser.screenshot("workflow-500").await;

    // Fluid: frame times in the page while all 500 jobs run and finish live.
    browser.record_frames().await;
    post(&h, "/api/queues/default/resume", None).await;
    browser
        .wait_for(
            "every node completed, live",
            "document.querySelectorAll('#dag .node[data-state=completed]').length === 500 && document.getElementById('workflow-state').textContent === 'completed'",
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let frames = browser.frames().await;
    assert!(
        frames["n"].as_u64().unwrap() >= 20,
        "frames were drawn: {frames}"
    );
    assert!(
        frames["max"].as_f64().unwrap() < 300.0,
        "no frame took 300 ms or more while 500 jobs finished: {frames}"
    );
    assert_eq!(
        h.engine.workflow("big").await.unwrap().state.as_str(),
        "completed"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_and_its_nav_is_reachable() {
    let h = harness().await;
    let addr = serve(&h, ServerOptions::default()).await;
    let (status, job) = h
        .call(
            Method::POST,
            "/api/jobs",
            Some(json!({"kind": "command", "id": "report-with-a-rather-long-identifier-2026-05-01",
                "command": ["sh", "-c", "echo a-very-long-line-of-output-without-any-space-in-it-at-all-that-goes-on-and-on-and-on; exit 3"],
                "max_attempts": 1, "labels": {"source": "a-long-label-value-for-the-phone-test"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    post(&h, "/api/workflows", Some(layered("phone", 3, 4))).await;
    post(
        &h,
        "/api/schedules",
        Some(json!({"id": "nightly-report", "job": {"kind": "echo"}, "trigger": {"type": "cron", "expr": "0 2 * * *"}, "timezone": "Europe/London"})),
    )
    .await;
    h.finished("report-with-a-rather-long-identifier-2026-05-01")
        .await;

    let mut browser = Browser::start().await;
    browser.size(390, 844).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    browser.open(&format!("{base}/")).await;
    for (name, hash, ready) in [
        ("overview", "#/", "document.getElementById('counters')"),
        ("jobs", "#/jobs", "document.querySelector('#jobs tr')"),
        (
            "job",
            "#/jobs/report-with-a-rather-long-identifier-2026-05-01",
            "document.querySelector('#attempts tr')",
        ),
        (
            "workflows",
            "#/workflows",
            "document.querySelector('#workflows tr')",
        ),
        (
            "workflow",
            "#/workflows/phone",
            "document.querySelectorAll('#dag .node').length === 12",
        ),
        (
            "schedules",
            "#/schedules",
            "document.querySelector('#schedules tr')",
        ),
        ("queues", "#/queues", "document.querySelector('#queues tr')"),
    ] {
        browser
            .evaluate(&format!("(location.hash = '{hash}', '1')"))
            .await;
        browser
            .wait_for(&format!("the {name} page"), &format!("{ready} && true"))
            .await;
        let fit = browser
            .evaluate(
                "(() => {
                  const links = [...document.querySelectorAll('#nav a')];
                  const unreachable = links.filter(a => { const r = a.getBoundingClientRect(); return r.width === 0 || r.left < 0 || r.right > innerWidth; }).map(a => a.textContent);
                  const wide = [...document.querySelectorAll('main *')].filter(n => n.getBoundingClientRect().right > innerWidth + 1 && !n.closest('table, .dag, pre, .scroll')).map(n => n.tagName + '.' + n.className).slice(0, 5);
                  return JSON.stringify({ width: document.scrollingElement.scrollWidth, inner: innerWidth, links: links.length, unreachable, wide });
                })()",
            )
            .await;
        assert_eq!(fit["inner"], 390, "{name}: {fit}");
        assert!(
            fit["width"].as_u64().unwrap() <= 390,
            "{name} overflows the phone's width: {fit}"
        );
        assert_eq!(fit["links"], 9, "{name}: {fit}");
        assert_eq!(fit["unreachable"], json!([]), "{name}: {fit}");
        assert_eq!(fit["wide"], json!([]), "{name}: {fit}");
        browser.screenshot(&format!("phone-{name}")).await;
    }
    // A nav link works from the phone.
    browser
        .evaluate("(document.querySelector('#nav a[href=\"#/schedules\"]').click(), '1')")
        .await;
    browser
        .wait_for("the schedules page", "location.hash === '#/schedules'")
        .await;
    browser.close().await;
}
