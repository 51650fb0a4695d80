/**
 * The package version, read once from package.json. The path is relative to the compiled file
 * (dist/src/ops/version.js), and require keeps package.json out of dist/.
 */
export const VERSION: string = require("../../../package.json").version;
