// k6: GET the last 50 messages of a conversation at a fixed arrival rate.
// Env: TARGET (base URL), TOKEN, CONVERSATION, RATE (req/s), DURATION, PATH_OVERRIDE (optional),
// EXPECT (status, default 200), TARGETS (optional: comma-separated base URLs, one picked at
// random per request — several chat pods without a gateway).
import http from 'k6/http';
import { check } from 'k6';

const rate = Number(__ENV.RATE || 1000);

export const options = {
    discardResponseBodies: true,
    scenarios: {
        history: {
            executor: 'constant-arrival-rate',
            rate: rate,
            timeUnit: '1s',
            duration: __ENV.DURATION || '30s',
            preAllocatedVUs: 50,
            maxVUs: 400,
        },
    },
    summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'max', 'avg'],
};

const path = __ENV.PATH_OVERRIDE || `/api/v1/conversations/${__ENV.CONVERSATION}/messages?limit=50`;
const params = { headers: { Authorization: `Bearer ${__ENV.TOKEN}` } };
const expected = Number(__ENV.EXPECT || 200);

const targets = (__ENV.TARGETS || __ENV.TARGET).split(',');

export default function () {
    const target = targets[Math.floor(Math.random() * targets.length)];
    const res = http.get(`${target}${path}`, params);
    check(res, { status: (r) => r.status === expected });
}
