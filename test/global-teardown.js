const fs = require('node:fs');

module.exports = async () => {
  if (process.env.MOE_TEST_TMP) fs.rmSync(process.env.MOE_TEST_TMP, { recursive: true, force: true });
};
