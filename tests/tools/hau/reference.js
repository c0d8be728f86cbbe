// Copyright (c) osfleet.hup contributors
// GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
//
// balena's own answers for tests/unit/plugins/plugin_utils/test_method_reference.py.
// Standard input: {"hup": [[device_type, current, target], ...], "compare": [[a, b], ...], "parse": [v, ...]}
// Standard output: {"hup": [{"method": m} | {"error": message}, ...], "compare": [-1|0|1, ...],
//                   "parse": [{major, minor, patch, prerelease, build} | null, ...]}
'use strict';

const { HUPActionHelper, HUPActionError } = require('balena-hup-action-utils');
const bSemver = require('balena-semver');

const helper = new HUPActionHelper();
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));

const hup = (input.hup || []).map(([deviceType, current, target]) => {
    try {
        return { method: helper.getHUPActionType(deviceType, current, target) };
    } catch (err) {
        if (!(err instanceof HUPActionError)) {
            throw err;
        }
        return { error: err.message };
    }
});
const compare = (input.compare || []).map(([a, b]) => bSemver.compare(a, b));
const parse = (input.parse || []).map((version) => {
    const parsed = bSemver.parse(version);
    return parsed && {
        major: parsed.major, minor: parsed.minor, patch: parsed.patch,
        prerelease: parsed.prerelease, build: parsed.build,
    };
});
process.stdout.write(JSON.stringify({ hup, compare, parse }));
