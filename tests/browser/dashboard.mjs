#!/usr/bin/env node
// Scripted browser scenario for the dockfra dashboard, driven by environment variables.
// Prints one JSON line per step on stdout; exits non-zero with a message on stderr on failure.
//
//   DOCKFRA_URL            https://127.0.0.1:PORT (the coordinator's REST/dashboard address)
//   DOCKFRA_TOKEN          an operator API token (`dockfra-coord operator token`)
//   DOCKFRA_STEP           login-bad | fleet | deploy | rollback | keyboard | rollout (comma-separated for several)
//   DOCKFRA_SHOTS          directory for screenshots (default: current directory)
//   DOCKFRA_EXPECT_TARGETS ids that must appear in the fleet (fleet, keyboard)
//   DOCKFRA_FILTER         label selector typed into the filter box (fleet), e.g. role=edge
//   DOCKFRA_FILTER_EXPECT  ids that must stay visible with that filter; all others must be hidden
//   DOCKFRA_TARGET         target for deploy / rollback / keyboard
//   DOCKFRA_RELEASE        release to roll back to (rollback)
//   DOCKFRA_ROLLBACK_VIA   history | releases: which button the rollback step clicks
//   DOCKFRA_EXPECT_RESULT  final deployment status expected (default succeeded)
//   DOCKFRA_EXPECT_STATE   target state expected in the fleet after the deploy (default healthy)
//   DOCKFRA_TIMEOUT_MS     per-wait limit (default 60000; rollout: for the fleet deploy to end, default 120000)
//   rollout: a fleet deploy from the fleet page's "Roll out…" panel, followed to its end
//   DOCKFRA_SELECTOR       label selector typed into the panel (kubectl syntax), e.g. role=edge,region in (eu)
//   DOCKFRA_CANARY         canary: 1 or 10% (optional)
//   DOCKFRA_MAX_PARALLEL   targets per wave after the canary (optional)
//   DOCKFRA_SOAK_S, DOCKFRA_WAVE_TIMEOUT_S  soak and wave timeout in seconds (optional)
//   DOCKFRA_ACTION         deploy (default) | rollback; DOCKFRA_VERSION: the version label (also deploy)
//   DOCKFRA_CONFIRM        1: production targets are among them: expect the confirmation, give it
//   DOCKFRA_WAVES          1: tick "Use the waves from deploy-targets.yaml" (the canary field must then be off)
//   DOCKFRA_AUTO_ROLLBACK  1: tick "Auto-rollback a failed wave" (deploy only)
//   DOCKFRA_CANCEL         1: click Cancel on the fleet deploy page as soon as it shows it running, confirm it,
//                          and wait for the orders given to end and the rest to be skipped
//   DOCKFRA_EXPECT_STATUS  the fleet deploy's final status (default succeeded; cancelled with DOCKFRA_CANCEL=1)
//   DOCKFRA_EXPECT_TARGETS (rollout) id=status,… each target's final status in it, e.g. a=succeeded,b=skipped
//   DOCKFRA_CHROMIUM       browser binary (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const env = process.env;
const BASE = (env.DOCKFRA_URL || '').replace(/\/+$/, '');
const TOKEN = env.DOCKFRA_TOKEN || '';
const SHOTS = env.DOCKFRA_SHOTS || '.';
const STEPS = (env.DOCKFRA_STEP || '').split(',').map((s) => s.trim()).filter(Boolean);
const TIMEOUT = Number(env.DOCKFRA_TIMEOUT_MS || 60000);
const list = (v) => (v || '').split(',').map((s) => s.trim()).filter(Boolean);
const EXPECT_TARGETS = list(env.DOCKFRA_EXPECT_TARGETS).map((e) => e.split('=')[0].trim()); // rollout: id=status
const TARGET = env.DOCKFRA_TARGET || '';
const RELEASE = env.DOCKFRA_RELEASE || '';
const EXPECT_RESULT = env.DOCKFRA_EXPECT_RESULT || 'succeeded';
const EXPECT_STATE = env.DOCKFRA_EXPECT_STATE || 'healthy';
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 800 };

class StepError extends Error {}
const fail = (msg) => { throw new StepError(msg); };
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const shot = (page, name, fullPage = true) => page.screenshot({ path: path.join(SHOTS, name), fullPage });
const tid = (page, id) => page.getByTestId(id, { exact: true });

function need(name, value) { if (!value) fail(`${name} is not set`); }

async function newPage(browser, opts = {}) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: opts.viewport || DESKTOP,
    colorScheme: opts.colorScheme || 'light',
    reducedMotion: 'reduce',
  });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push('uncaught exception: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push('CSP: ' + m.text());
  });
  page.problems = problems;
  return page;
}
function checkProblems(page) {
  if (page.problems.length) fail('the page reported errors: ' + page.problems.join(' | '));
}

async function login(page, token = TOKEN) {
  await page.goto(BASE + '/#/', { waitUntil: 'domcontentloaded' });
  await tid(page, 'login-token').fill(token);
  await tid(page, 'login-submit').click();
}
async function loginOk(page) {
  need('DOCKFRA_TOKEN', TOKEN);
  await login(page);
  await Promise.race([
    tid(page, 'fleet-table').waitFor({ state: 'visible' }),
    tid(page, 'error').filter({ hasText: /\S/ }).waitFor({ state: 'visible' }).then(async () => {
      fail('login failed: ' + (await tid(page, 'error').innerText()).replace(/\s*Dismiss$/, ''));
    }),
  ]);
}
async function waitRows(page, ids) {
  for (const id of ids) {
    try {
      await tid(page, 'fleet-row-' + id).waitFor({ state: 'visible', timeout: Math.min(TIMEOUT, 20000) });
    } catch (_) {
      const shown = await page.locator('[data-testid^="fleet-row-"]').evaluateAll((els) => els.map((e) => e.dataset.testid.slice(10)));
      fail(`target ${id} is not in the fleet table (shown: ${shown.join(', ') || 'none'})`);
    }
  }
}
async function states(page) {
  return page.locator('[data-testid^="dot-"]').evaluateAll((els) => Object.fromEntries(els.map((e) => [e.dataset.testid.slice(4), e.dataset.state])));
}
async function openTarget(page, id) {
  await page.evaluate((h) => { location.hash = h; }, '#/targets/' + encodeURIComponent(id));
  await page.waitForFunction(() => {
    const s = document.querySelector('[data-testid="target-state"]');
    return s && s.dataset.state && s.dataset.state !== 'unknown';
  });
}
async function waitResult(page) {
  await page.waitForFunction(() => {
    const r = document.querySelector('[data-testid="progress-result"]');
    return r && r.dataset.result && r.dataset.result !== 'pending';
  }, null, { timeout: TIMEOUT }).catch(async () => {
    const n = await page.locator('[data-testid="progress"] li').count();
    fail(`no final result within ${TIMEOUT} ms (${n} steps shown)`);
  });
  // The last progress events and "end" can arrive together; give the list a moment.
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="progress"] li[data-phase]').length > 0, null, { timeout: 3000 }).catch(() => {});
  const r = await page.evaluate(() => {
    const res = document.querySelector('[data-testid="progress-result"]');
    const panel = document.querySelector('[data-testid="progress-panel"]');
    return {
      deployment_id: panel ? panel.dataset.deployment : null,
      result: res.dataset.result,
      result_text: res.textContent.trim(),
      phases: [...document.querySelectorAll('[data-testid="progress"] li')].map((li) => li.dataset.phase),
    };
  });
  if (!r.phases.length) fail(`deployment ${r.deployment_id} ended ${r.result} but the progress list shows no step`);
  return r;
}
async function focusInfo(page) {
  return page.evaluate(() => {
    const a = document.activeElement;
    if (!a || a === document.body) return null;
    window.__fid = window.__fid || 0;
    if (!a.__fid) a.__fid = ++window.__fid;
    const cs = getComputedStyle(a);
    const row = a.closest('[data-testid^="fleet-row-"]');
    return {
      fid: a.__fid, tag: a.tagName.toLowerCase(), testid: a.dataset.testid || '',
      text: (a.textContent || '').trim().slice(0, 40), row: row ? row.dataset.testid.slice(10) : '',
      inPlan: !!a.closest('[data-testid="plan"]'),
      visible: (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || cs.boxShadow !== 'none',
    };
  });
}
async function tabTo(page, what, pred, max = 80) {
  let prev = await focusInfo(page);
  for (let i = 1; i <= max; i++) {
    await page.keyboard.press('Tab');
    const f = await focusInfo(page);
    if (!f) fail(`Tab #${i} on the way to ${what} left focus on the page body`);
    if (prev && f.fid === prev.fid) fail(`Tab #${i} on the way to ${what} did not move focus (stuck on <${f.tag}> "${f.text}")`);
    if (['a', 'button', 'input'].includes(f.tag) && !f.visible) fail(`focused <${f.tag}> "${f.text || f.testid}" has no visible focus indicator`);
    if (pred(f)) return { f, tabs: i };
    prev = f;
  }
  return fail(`${what} was not reached within ${max} Tab presses`);
}

// ---------------- steps ----------------
const steps = {
  async 'login-bad'(browser) {
    const page = await newPage(browser);
    await login(page, 'not-a-valid-token-' + Date.now());
    const err = tid(page, 'error');
    await err.filter({ hasText: /\S/ }).waitFor({ state: 'visible' });
    const text = (await err.innerText()).replace(/\s*Dismiss$/, '').trim();
    if (!(await tid(page, 'login-token').isVisible())) fail('the login form is gone after a refused token');
    if (await tid(page, 'fleet-table').count()) fail('the fleet is shown after a refused token');
    if (await page.evaluate(() => Object.keys(sessionStorage).length)) fail('something was kept in sessionStorage after a refused token');
    if ((await err.getAttribute('role')) !== 'alert') fail('the error area has no role=alert');
    await shot(page, 'login-bad.png', false);
    checkProblems(page);
    return { error: text };
  },

  async fleet(browser) {
    const page = await newPage(browser);
    await loginOk(page);
    await waitRows(page, EXPECT_TARGETS);
    const st = await states(page);
    const counts = await tid(page, 'state-counts').innerText();
    // Sorting: header buttons toggle aria-sort.
    const th = page.locator('th[data-col="target"]');
    await tid(page, 'sort-target').click();
    const s1 = await th.getAttribute('aria-sort');
    await tid(page, 'sort-target').click();
    const s2 = await th.getAttribute('aria-sort');
    if (!s1 || !s2 || s1 === s2) fail(`sorting by target did not toggle aria-sort (${s1} then ${s2})`);
    if (s2 !== 'ascending') await tid(page, 'sort-target').click();
    await page.waitForTimeout(300);
    await shot(page, 'fleet.png');
    let filter = null;
    if (env.DOCKFRA_FILTER) {
      const keep = list(env.DOCKFRA_FILTER_EXPECT);
      await tid(page, 'label-filter').fill(env.DOCKFRA_FILTER);
      const hide = EXPECT_TARGETS.filter((id) => !keep.includes(id));
      await page.waitForFunction(([k, hd]) => {
        const vis = (id) => { const r = document.querySelector(`[data-testid="fleet-row-${CSS.escape(id)}"]`); return !!r && r.getClientRects().length > 0; };
        return k.every(vis) && !hd.some(vis);
      }, [keep, hide], { timeout: 5000 }).catch(async () => {
        const shown = await page.locator('[data-testid^="fleet-row-"]:visible').evaluateAll((els) => els.map((e) => e.dataset.testid.slice(10)));
        fail(`filter ${env.DOCKFRA_FILTER}: expected exactly ${keep.join(', ') || 'none'} of ${EXPECT_TARGETS.join(', ')}, shown: ${shown.join(', ') || 'none'}`);
      });
      const visible = await page.locator('[data-testid^="fleet-row-"]:visible').evaluateAll((els) => els.map((e) => e.dataset.testid.slice(10)));
      await shot(page, 'fleet-filter.png');
      filter = { selector: env.DOCKFRA_FILTER, visible };
    }
    checkProblems(page);
    await page.context().close();

    const phone = await newPage(browser, { viewport: PHONE });
    await loginOk(phone);
    await waitRows(phone, EXPECT_TARGETS);
    await phone.waitForTimeout(300);
    const sw = await phone.evaluate(() => document.documentElement.scrollWidth);
    if (sw > PHONE.width + 1) fail(`at ${PHONE.width} px the page scrolls sideways (scrollWidth ${sw})`);
    await shot(phone, 'fleet-phone.png');
    checkProblems(phone);
    await phone.context().close();

    const dark = await newPage(browser, { colorScheme: 'dark' });
    await loginOk(dark);
    await waitRows(dark, EXPECT_TARGETS);
    await dark.waitForTimeout(300);
    await shot(dark, 'fleet-dark.png');
    checkProblems(dark);
    await dark.context().close();
    return { states: st, counts: counts.replace(/\s+/g, ' ').trim(), phone_scroll_width: sw, filter };
  },

  async deploy(browser) {
    need('DOCKFRA_TARGET', TARGET);
    const page = await newPage(browser);
    await loginOk(page);
    await openTarget(page, TARGET);
    await tid(page, 'deploy-button').click();
    await tid(page, 'plan').waitFor({ state: 'visible' });
    await shot(page, 'plan.png');
    if (env.DOCKFRA_VERSION) await tid(page, 'deploy-version').fill(env.DOCKFRA_VERSION);
    await tid(page, 'confirm-deploy').click();
    await Promise.race([
      tid(page, 'progress').waitFor({ state: 'visible' }),
      tid(page, 'error').filter({ hasText: /\S/ }).waitFor({ state: 'visible' }).then(async () => {
        fail('the deploy was refused: ' + (await tid(page, 'error').innerText()).replace(/\s*Dismiss$/, ''));
      }),
    ]);
    const r = await waitResult(page);
    await page.waitForTimeout(300);
    await shot(page, 'progress.png');
    if (r.result !== EXPECT_RESULT) fail(`deployment ${r.deployment_id} ended ${r.result}, expected ${EXPECT_RESULT}: ${r.result_text}`);
    await page.evaluate(() => { location.hash = '#/'; });
    await tid(page, 'fleet-table').waitFor({ state: 'visible' });
    const dot = tid(page, 'dot-' + TARGET);
    await page.waitForFunction(([id, want]) => {
      const d = document.querySelector(`[data-testid="dot-${CSS.escape(id)}"]`);
      return d && d.dataset.state === want;
    }, [TARGET, EXPECT_STATE], { timeout: TIMEOUT }).catch(async () => {
      fail(`${TARGET} shows state ${await dot.getAttribute('data-state').catch(() => 'none')} in the fleet, expected ${EXPECT_STATE}`);
    });
    checkProblems(page);
    return { target: TARGET, deployment_id: r.deployment_id, result: r.result, phases: r.phases, state: EXPECT_STATE };
  },

  async rollback(browser) {
    need('DOCKFRA_TARGET', TARGET);
    need('DOCKFRA_RELEASE', RELEASE);
    const page = await newPage(browser);
    await loginOk(page);
    await openTarget(page, TARGET);
    const kept = tid(page, 'rollback-' + RELEASE);
    const fromHistory = tid(page, 'history-table').getByRole('button', { name: 'Roll back to ' + RELEASE, exact: true }).first();
    // DOCKFRA_ROLLBACK_VIA=history|releases picks the button; unset: the kept releases', else the history's.
    let via = process.env.DOCKFRA_ROLLBACK_VIA || 'releases';
    if (via === 'history') {
      await fromHistory.waitFor({ state: 'visible', timeout: 10000 }).catch(() => fail(`no rollback button in the history for release ${RELEASE} on ${TARGET}`));
    } else {
      try {
        await kept.waitFor({ state: 'visible', timeout: 10000 });
      } catch (_) {
        if (process.env.DOCKFRA_ROLLBACK_VIA) fail(`no rollback button among the kept releases for ${RELEASE} on ${TARGET}`);
        via = 'history';
        await fromHistory.waitFor({ state: 'visible', timeout: 10000 }).catch(() => fail(`no rollback button for release ${RELEASE} on ${TARGET}`));
      }
    }
    await (via === 'releases' ? kept : fromHistory).click();
    await Promise.race([
      tid(page, 'progress').waitFor({ state: 'visible' }),
      tid(page, 'error').filter({ hasText: /\S/ }).waitFor({ state: 'visible' }).then(async () => {
        fail('the rollback was refused: ' + (await tid(page, 'error').innerText()).replace(/\s*Dismiss$/, ''));
      }),
    ]);
    const r = await waitResult(page);
    await page.waitForTimeout(300);
    await shot(page, 'rollback.png');
    if (r.result !== EXPECT_RESULT) fail(`rollback ${r.deployment_id} ended ${r.result}, expected ${EXPECT_RESULT}: ${r.result_text}`);
    checkProblems(page);
    return { target: TARGET, release: RELEASE, via, deployment_id: r.deployment_id, result: r.result, phases: r.phases };
  },

  async rollout(browser) {
    const selector = env.DOCKFRA_SELECTOR || '';
    need('DOCKFRA_SELECTOR', selector);
    const wait = Number(env.DOCKFRA_TIMEOUT_MS || 120000);
    const cancel = env.DOCKFRA_CANCEL === '1';
    const expectStatus = env.DOCKFRA_EXPECT_STATUS || (cancel ? 'cancelled' : 'succeeded');
    const expect = Object.fromEntries(list(env.DOCKFRA_EXPECT_TARGETS).map((e) => {
      const i = e.indexOf('=');
      return i < 0 ? [e, null] : [e.slice(0, i).trim(), e.slice(i + 1).trim()];
    }));
    const errText = async (page) => (await tid(page, 'error').innerText()).replace(/\s*Dismiss$/, '').trim();
    const errShown = (page) => tid(page, 'error').filter({ hasText: /\S/ }).waitFor({ state: 'visible' });
    const page = await newPage(browser);
    await loginOk(page);
    await tid(page, 'rollout-button').click();
    await tid(page, 'rollout-panel').waitFor({ state: 'visible' });
    if (!(await page.evaluate(() => !!document.activeElement.closest('[data-testid="rollout-panel"]')))) fail('focus did not move into the rollout panel when it opened');
    await tid(page, 'rollout-selector').fill(selector);
    // The panel asks the coordinator which targets the selector names.
    const mc = tid(page, 'rollout-match-count');
    await page.waitForFunction(() => {
      const m = document.querySelector('[data-testid="rollout-match-count"]');
      return m && ['ok', 'none', 'bad'].includes(m.dataset.state);
    }).catch(() => fail('the rollout panel shows no match count for the selector'));
    const match = await mc.evaluate((m) => ({ state: m.dataset.state, text: m.textContent.trim(), ids: (m.dataset.targets || '').split(',').filter(Boolean) }));
    if (match.state !== 'ok') fail(`selector ${selector}: ${match.text}`);
    const missing = Object.keys(expect).filter((id) => !match.ids.includes(id));
    if (missing.length) fail(`selector ${selector} does not name ${missing.join(', ')} (it matches ${match.ids.join(', ')})`);
    if (env.DOCKFRA_ACTION) await tid(page, 'rollout-action').selectOption(env.DOCKFRA_ACTION);
    if (env.DOCKFRA_VERSION && (env.DOCKFRA_ACTION || 'deploy') === 'deploy') await tid(page, 'rollout-version').fill(env.DOCKFRA_VERSION);
    if (env.DOCKFRA_CANARY) await tid(page, 'rollout-canary').fill(env.DOCKFRA_CANARY);
    if (env.DOCKFRA_MAX_PARALLEL) await tid(page, 'rollout-max-parallel').fill(env.DOCKFRA_MAX_PARALLEL);
    if (env.DOCKFRA_SOAK_S) await tid(page, 'rollout-soak').fill(env.DOCKFRA_SOAK_S);
    if (env.DOCKFRA_WAVE_TIMEOUT_S) await tid(page, 'rollout-wave-timeout').fill(env.DOCKFRA_WAVE_TIMEOUT_S);
    if (env.DOCKFRA_WAVES === '1') {
      await tid(page, 'rollout-waves').check();
      // The coordinator takes the declared waves or a canary, not both: the canary field goes off.
      const c = await tid(page, 'rollout-canary').evaluate((i) => ({ disabled: i.disabled, value: i.value }));
      if (!c.disabled || c.value) fail(`with the declared waves ticked the canary field is still ${c.disabled ? 'filled (' + c.value + ')' : 'enabled'}`);
    }
    if (env.DOCKFRA_AUTO_ROLLBACK === '1') {
      const ar = tid(page, 'rollout-auto-rollback');
      if (!(await ar.isVisible())) fail('no "Auto-rollback a failed wave" box in the rollout panel' + (env.DOCKFRA_ACTION ? ` (action ${env.DOCKFRA_ACTION})` : ''));
      await ar.check();
    }
    await shot(page, 'rollout-panel.png', false);
    await tid(page, 'rollout-start').click();
    const started = () => page.waitForFunction(() => /^#\/fleet-deploys\/./.test(location.hash), null, { timeout: TIMEOUT });
    const refused = () => errShown(page).then(async () => fail('the fleet deploy was refused: ' + (await errText(page))));
    const confirm = tid(page, 'rollout-confirm');
    let confirmText = null;
    if (env.DOCKFRA_CONFIRM === '1') {
      await Promise.race([confirm.waitFor({ state: 'visible' }), refused(),
        started().then(() => fail('the fleet deploy started without asking to confirm production targets'))]);
      confirmText = (await tid(page, 'rollout-production').innerText()).trim().split('\n')[0];
      if (!/confirm/i.test(confirmText)) fail('the production confirmation does not say what to confirm: ' + confirmText);
      await shot(page, 'rollout-confirm.png', false);
      await confirm.check();
      await tid(page, 'rollout-start').click();
    }
    await Promise.race([started(), refused(), confirmText !== null ? null
      : confirm.waitFor({ state: 'visible' }).then(async () => fail('production confirmation asked (DOCKFRA_CONFIRM is not 1): ' + (await tid(page, 'rollout-production').innerText()).trim().split('\n')[0]))]);
    const id = await page.evaluate(() => decodeURIComponent(location.hash.replace(/^#\/fleet-deploys\//, '')));
    const fd = tid(page, 'fleet-deploy');
    await fd.waitFor({ state: 'visible' });
    let cancelError = null;
    if (cancel) {
      // As soon as the page shows it running: Cancel, then the confirmation in the page.
      await page.waitForFunction(() => {
        const s = document.querySelector('[data-testid="fleet-deploy"]')?.dataset.status;
        return s && s !== 'running' ? true : !!document.querySelector('[data-testid="fleet-cancel"]:not([hidden])');
      }, null, { timeout: wait, polling: 50 });
      const st = await fd.getAttribute('data-status');
      if (st !== 'running') fail(`fleet deploy ${id} ended ${st} before the page showed it running, so there was nothing to cancel`);
      await tid(page, 'fleet-cancel').click();
      const ask = tid(page, 'fleet-cancel-ask');
      await ask.waitFor({ state: 'visible', timeout: 5000 }).catch(() => fail('Cancel asked for no confirmation in the page'));
      if (!(await page.evaluate(() => !!document.activeElement.closest('[data-testid="fleet-cancel-ask"]')))) fail('focus did not move into the cancel confirmation');
      await shot(page, 'rollout-cancel-ask.png', false);
      await tid(page, 'fleet-cancel-confirm').click();
      await Promise.race([
        page.waitForFunction(() => document.querySelector('[data-testid="fleet-deploy"]')?.dataset.status !== 'running', null, { timeout: wait }),
        errShown(page),
      ]).catch(() => {});
      if (await tid(page, 'error').filter({ hasText: /\S/ }).count()) cancelError = await errText(page);
    }
    await page.waitForFunction(() => {
      const s = document.querySelector('[data-testid="fleet-deploy"]')?.dataset.status;
      return s && s !== 'running';
    }, null, { timeout: wait }).catch(async () => {
      fail(`fleet deploy ${id} still ${await fd.getAttribute('data-status')} after ${wait} ms`);
    });
    // Cancelled: the orders given run on, the targets not ordered yet become skipped.
    if ((await fd.getAttribute('data-status')) === 'cancelled') {
      await page.waitForFunction(() => ![...document.querySelectorAll('[data-testid^="fleet-target-"]')].some((x) => ['planned', 'deploying'].includes(x.dataset.status)),
        null, { timeout: wait }).catch(async () => {
        const left = await page.locator('[data-testid^="fleet-target-"]').evaluateAll((els) => els.filter((x) => ['planned', 'deploying'].includes(x.dataset.status)).map((x) => `${x.dataset.testid.slice(13)} ${x.dataset.status}`));
        fail(`fleet deploy ${id} was cancelled but after ${wait} ms these targets have not ended: ${left.join(', ')}`);
      });
    }
    const r = await page.evaluate(() => {
      const el = document.querySelector('[data-testid="fleet-deploy"]');
      const rows = [...document.querySelectorAll('[data-testid^="fleet-target-"]')];
      return {
        status: el.dataset.status,
        reason: (document.querySelector('.reason')?.textContent || '').trim(),
        targets: Object.fromEntries(rows.map((x) => [x.dataset.testid.slice(13), x.dataset.status])),
        waves: Object.fromEntries(rows.map((x) => [x.dataset.testid.slice(13), Number(x.dataset.wave)])),
        wave_names: [...document.querySelectorAll('[data-testid^="fleet-wave-"] h2')].map((x) => x.textContent.trim()),
        skipped: Object.fromEntries(rows.filter((x) => x.dataset.status === 'skipped')
          .map((x) => [x.dataset.testid.slice(13), (x.querySelector('.fd-reason')?.textContent || '').trim()])),
      };
    });
    const noReason = Object.entries(r.skipped).filter(([, why]) => !why).map(([t]) => t);
    if (noReason.length) fail(`fleet deploy ${id}: skipped target(s) ${noReason.join(', ')} show no reason`);
    await page.waitForTimeout(300);
    await shot(page, 'rollout.png');
    if (r.status !== expectStatus) fail(`fleet deploy ${id} ended ${r.status}, expected ${expectStatus}: ${r.reason}${cancelError ? ` (cancel: ${cancelError})` : ''}`);
    for (const [t, want] of Object.entries(expect)) {
      if (!(t in r.targets)) fail(`target ${t} is not in fleet deploy ${id} (${Object.keys(r.targets).join(', ')})`);
      if (want && r.targets[t] !== want) fail(`target ${t} ended ${r.targets[t]} in fleet deploy ${id}, expected ${want}`);
    }
    // The fleet page lists it with the same status.
    await page.evaluate(() => { location.hash = '#/'; });
    await page.waitForFunction(([fid, st]) => document.querySelector(`[data-testid="fleet-deploy-row-${CSS.escape(fid)}"]`)?.dataset.status === st,
      [id, r.status], { timeout: 10000 }).catch(() => fail(`fleet deploy ${id} is not listed as ${r.status} on the fleet page`));
    checkProblems(page);
    await page.context().close();

    const phone = await newPage(browser, { viewport: PHONE, colorScheme: 'dark' });
    await loginOk(phone);
    await phone.evaluate((h) => { location.hash = h; }, '#/fleet-deploys/' + encodeURIComponent(id));
    await phone.waitForFunction(() => document.querySelector('[data-testid="fleet-deploy"]')?.dataset.status);
    await phone.waitForTimeout(300);
    const sw = await phone.evaluate(() => document.documentElement.scrollWidth);
    if (sw > PHONE.width + 1) fail(`at ${PHONE.width} px the fleet deploy page scrolls sideways (scrollWidth ${sw})`);
    await shot(phone, 'rollout-phone.png');
    checkProblems(phone);
    return {
      fleet_id: id, status: r.status, reason: r.reason, targets: r.targets, waves: r.waves, matched: match.ids, confirm: confirmText,
      wave_names: r.wave_names, skipped: r.skipped, declared_waves: env.DOCKFRA_WAVES === '1', auto_rollback: env.DOCKFRA_AUTO_ROLLBACK === '1',
      cancelled: cancel ? cancelError === null : null, cancel_error: cancelError,
    };
  },

  async keyboard(browser) {
    need('DOCKFRA_TOKEN', TOKEN);
    const page = await newPage(browser);
    await page.goto(BASE + '/#/', { waitUntil: 'domcontentloaded' });
    await tid(page, 'login-token').waitFor({ state: 'visible' });
    let total = 0;
    let f = await focusInfo(page);
    if (!f || f.testid !== 'login-token') total += (await tabTo(page, 'the token field', (x) => x.testid === 'login-token')).tabs;
    await page.keyboard.type(TOKEN);
    await page.keyboard.press('Enter');
    await tid(page, 'fleet-table').waitFor({ state: 'visible' });
    const ids = TARGET ? [TARGET] : EXPECT_TARGETS.slice(0, 1);
    if (ids.length) await waitRows(page, ids);
    else await page.locator('[data-testid^="fleet-row-"]').first().waitFor();
    const target = ids[0] || (await page.locator('[data-testid^="fleet-row-"]').first().getAttribute('data-testid')).slice(10);
    let r = await tabTo(page, `the link to ${target}`, (x) => x.tag === 'a' && x.row === target);
    total += r.tabs;
    await page.keyboard.press('Enter');
    await page.waitForFunction((id) => location.hash === '#/targets/' + encodeURIComponent(id), target);
    await tid(page, 'deploy-button').waitFor({ state: 'visible' });
    r = await tabTo(page, 'the Deploy button', (x) => x.testid === 'deploy-button');
    total += r.tabs;
    await page.keyboard.press('Enter');
    await tid(page, 'plan').waitFor({ state: 'visible' });
    f = await focusInfo(page);
    if (!f || !f.inPlan) fail('focus did not move into the plan after opening it');
    r = await tabTo(page, 'Confirm deploy', (x) => x.testid === 'confirm-deploy', 200);
    total += r.tabs;
    await shot(page, 'keyboard.png', false);
    await page.keyboard.press('Escape');
    await tid(page, 'plan').waitFor({ state: 'detached' });
    f = await focusInfo(page);
    if (!f || f.testid !== 'deploy-button') fail('Escape closed the plan but focus did not return to the Deploy button');
    checkProblems(page);
    return { target, tabs: total };
  },
};

async function main() {
  need('DOCKFRA_URL', BASE);
  if (!STEPS.length) fail('DOCKFRA_STEP is not set (one of: ' + Object.keys(steps).join(', ') + ')');
  for (const s of STEPS) if (!steps[s]) fail(`unknown step ${s} (known: ${Object.keys(steps).join(', ')})`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: env.DOCKFRA_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    headless: true,
  });
  let code = 0;
  try {
    for (const s of STEPS) {
      const t0 = Date.now();
      try {
        const res = await steps[s](browser);
        out({ step: s, ok: true, ms: Date.now() - t0, ...res });
      } catch (e) {
        for (const c of browser.contexts()) for (const p of c.pages()) await shot(p, `fail-${s}.png`).catch(() => {});
        const msg = e instanceof StepError ? e.message : e.stack || String(e);
        out({ step: s, ok: false, ms: Date.now() - t0, error: msg.split('\n')[0] });
        process.stderr.write(`dashboard.mjs: step ${s} failed: ${msg}\n`);
        code = 1;
        break;
      } finally {
        for (const c of browser.contexts()) await c.close().catch(() => {});
      }
    }
  } finally {
    await browser.close();
  }
  process.exit(code);
}
main().catch((e) => {
  out({ step: STEPS.join(',') || null, ok: false, error: e.message });
  process.stderr.write('dashboard.mjs: ' + (e instanceof StepError ? e.message : e.stack || e.message) + '\n');
  process.exit(2);
});
