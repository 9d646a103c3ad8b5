export const test = {
};
